"""StackDecoder: token-by-token decoding with the state in fixed buffers (the CUDA-graph path) gives what plain
streaming gives, exactly; the CUDA graph itself is checked in test_gpu.py."""

from __future__ import annotations

import pytest
import torch

from t4dm.errors import InvalidInput
from t4dm.spiking import GlassBox, StackDecoder

from .helpers import small_stack

B, D, H = 2, 32, 4


def _streams(stack, tokens, contexts, state):
    """Plain streaming, one token at a time: the hidden states and the final state."""
    hidden = []
    for t in range(tokens.shape[1]):
        ctx = None if contexts[t] is None else contexts[t]
        out = stack(tokens[:, t : t + 1], ctx, state=state, return_state=True)
        hidden.append(out.hidden)
        state = out.state
    return torch.cat(hidden, dim=1), state


@pytest.mark.parametrize("with_context", [True, False])
def test_the_decoder_equals_plain_streaming_exactly(with_context):
    stack = small_stack(3, D, H, seed=2)
    stack.bus.set("acetylcholine", 0.8)
    prompt, tokens = torch.randn(B, 9, D), torch.randn(B, 12, D)
    contexts = [torch.randn(B, D) if with_context else None for _ in range(12)]
    with torch.no_grad():
        start = stack(prompt, return_state=True).state
        want, want_state = _streams(stack, tokens, contexts, start)
        decoder = StackDecoder(stack, start, context=with_context, graph=False)
        got = []
        for t in range(12):
            out = decoder(tokens[:, t : t + 1], contexts[t])
            assert out.state is decoder.state
            got.append(out.hidden.clone())
    assert torch.equal(torch.cat(got, dim=1), want)
    for mine, theirs in zip(decoder.state.blocks, want_state.blocks, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            assert torch.equal(a, b)
    assert int(decoder.state.clock) == int(want_state.clock) == 9 + 12
    # the state it started from was copied, not advanced
    assert int(start.clock) == 9


def test_a_step_of_another_shape_runs_eagerly_on_the_same_buffers():
    """A context that comes and goes (a memory read that found nothing) and a recorder: the same results."""
    stack = small_stack(2, D, H, seed=5)
    tokens = torch.randn(B, 6, D)
    contexts = [torch.randn(B, 1, D), None, torch.randn(B, D), None, None, torch.randn(B, D)]
    with torch.no_grad():
        start = stack(torch.randn(B, 4, D), return_state=True).state
        want, _ = _streams(stack, tokens, contexts, start)
        decoder = StackDecoder(stack, start, context=True, graph=False)
        box = GlassBox(("spikes",))
        got = []
        with box.attach(stack):
            for t in range(6):
                got.append(decoder(tokens[:, t], contexts[t]).hidden.clone())
    assert torch.equal(torch.cat(got, dim=1), want)
    assert box.get(0, "spikes").shape == (B, 6, D)  # every step recorded (eager with a recorder)


def test_load_continues_from_another_state():
    stack = small_stack(2, D, H, seed=1)
    with torch.no_grad():
        a = stack(torch.randn(B, 5, D), return_state=True).state
        b = stack(torch.randn(B, 7, D), return_state=True).state
        x = torch.randn(B, 1, D)
        decoder = StackDecoder(stack, a, graph=False)
        decoder.load(b)
        assert torch.equal(decoder(x).hidden, stack(x, state=b).hidden)
        with pytest.raises(InvalidInput, match="state"):
            decoder.load(stack(torch.randn(B + 1, 2, D), return_state=True).state)


def test_bad_decoder_input_is_refused():
    stack = small_stack(2, D, H)
    with torch.no_grad():
        state = stack(torch.randn(B, 3, D), return_state=True).state
        decoder = StackDecoder(stack, state, graph=False)
        for x in (torch.randn(B, 2, D), torch.randn(B + 1, 1, D), torch.randn(B, 1, D + 1), "token"):
            with pytest.raises(InvalidInput, match=r"^x="):
                decoder(x)
        with pytest.raises(InvalidInput, match=r"^context="):
            decoder(torch.randn(B, 1, D), torch.randn(B, 3, D))
    with pytest.raises(InvalidInput, match="grad"):
        decoder(torch.randn(B, 1, D))  # autograd on, the stack's weights trainable
    with pytest.raises(InvalidInput, match=r"^state="):
        StackDecoder(stack, small_stack(3, D, H).init_state(B))
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInput, match=r"^graph=.*CUDA"):
            StackDecoder(stack, state, graph=True)


def test_no_glass_box_sees_the_capture_and_any_recorder_makes_steps_eager():
    """Warm-up and capture run with every recorder of the stack detached (a graph would keep its records'
    tensors), restored after; a recorder on one block alone also sends steps down the eager path."""
    stack = small_stack(2, D, H, seed=4)
    with torch.no_grad():
        state = stack(torch.randn(B, 3, D), return_state=True).state
        decoder = StackDecoder(stack, state, graph=False)
        box = GlassBox(("spikes",))
        with box.attach(stack):
            with decoder._unrecorded():
                assert all(m.recorder is None for m in (stack, *stack.blocks))
            assert stack.recorder is box and all(b.recorder is box for b in stack.blocks)
        assert not decoder._recording()
        with box.attach(stack.blocks[1]):
            assert decoder._recording()
            decoder(torch.randn(B, 1, D))
        assert box.get(1, "spikes").shape == (B, 1, D)
