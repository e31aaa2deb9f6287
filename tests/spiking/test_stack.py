"""The cortical stack on the CPU: shapes, dtypes, gradients, streaming equivalence, torch.compile.

Streaming tolerance: float32 hidden states and states within 1e-5 relative (the kernels' float32
tolerance); spikes compared exactly. The chunked and the token-by-token paths compute the same float32
values by different operation orders (chunked vs recurrent attention/RWKV, matrix products with other row
counts), so a spike whose membrane lies within rounding of the threshold could in principle flip; the
seeds here have none, and a flip is reported with its block, population and position.
"""

from __future__ import annotations

import pytest
import torch

from t4dm.errors import InvalidInput
from t4dm.spiking import BlockSignals, BlockState, CorticalStack, GlassBox, StackState, parameter_count
from tests.spiking.helpers import (
    SPIKE_KINDS,
    rel_err,
    run_in_chunks,
    small_stack,
    spike_mismatches,
    triton_ops,
)

B, T, D, H = 2, 24, 32, 4


def test_parameter_count_at_issue_size():
    """The issue's stack: 6 blocks, d_model 1024, 16 heads (the exact count is in docs/spiking.md)."""
    with torch.device("meta"):
        stack = CorticalStack(6, 1024, 16)
    count = parameter_count(stack)
    assert count == 72_908_896
    assert 50e6 <= count <= 80e6
    per_block = parameter_count(stack.blocks[0])
    assert count == 6 * per_block + 4 * 1024  # + context and output norms


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_shapes_and_dtypes(dtype):
    stack = small_stack(3, D, H).to(dtype)
    x = torch.randn(B, T, D, dtype=dtype)
    out = stack(x, torch.randn(B, D, dtype=dtype), return_state=True)
    assert out.hidden.shape == (B, T, D) and out.hidden.dtype == dtype
    assert torch.isfinite(out.hidden.float()).all()
    assert len(out.signals) == 3
    for signals in out.signals:
        assert isinstance(signals, BlockSignals)
        for value in signals:
            assert value.shape == (B, T) and value.dtype == torch.float32
    K = D // H
    expected = {"membrane": (B, D), "qk_membrane": (B, 2 * D), "attention": (B, H, K, K),
                "familiarity": (B, D), "shift": (B, D), "rwkv": (B, H, K, K)}  # fmt: skip
    for block_state in out.state.blocks:
        for name, shape in expected.items():
            value = getattr(block_state, name)
            assert value.shape == shape, name
            assert value.dtype == torch.float32, f"{name} state is {value.dtype}, not float32"
    assert out.state.clock.dtype == torch.int64 and int(out.state.clock) == T
    assert stack.bus.levels.dtype == torch.float32
    means = out.signal_means()
    assert set(means) == set(BlockSignals._fields) and means["novelty"].shape == (3,)


def test_gradients_reach_every_parameter():
    """Every trainable parameter gets a finite, non-zero gradient from a loss on the output.

    NE is set off its neutral 0.5 because the gate's NE gain multiplies (NE − 0.5); with a context the
    apical prediction path is used.
    """
    stack = small_stack(2, D, H)
    stack.bus.set("norepinephrine", 0.7)
    x = torch.randn(B, T, D, requires_grad=True)
    context = torch.randn(B, T, D)
    out = stack(x, context)
    (out.hidden * torch.randn_like(out.hidden)).sum().backward()  # not |LN(·)|², which is constant
    missing = [name for name, p in stack.named_parameters() if p.grad is None]
    assert not missing, f"no gradient: {missing}"
    bad = [name for name, p in stack.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient: {bad}"
    zero = [name for name, p in stack.named_parameters() if float(p.grad.abs().max()) == 0.0]
    assert not zero, f"zero gradient: {zero}"
    assert x.grad is not None and float(x.grad.abs().max()) > 0


def _streaming_case(stack, x, context, sizes):
    whole_box, chunk_box = GlassBox(SPIKE_KINDS), GlassBox(SPIKE_KINDS)
    with whole_box.attach(stack):
        whole = stack(x, context, return_state=True)
    hidden, state = run_in_chunks(stack, x, context, sizes, chunk_box)
    flips = spike_mismatches(whole_box, chunk_box, stack.n_blocks)
    assert not flips, f"spikes differ between whole and chunked runs: {flips}"
    assert rel_err(hidden, whole.hidden) <= 1e-5
    for i, (a, b) in enumerate(zip(state.blocks, whole.state.blocks, strict=True)):
        for name in a._fields:
            assert rel_err(getattr(a, name), getattr(b, name)) <= 1e-5, f"block {i} state {name}"
    assert int(state.clock) == int(whole.state.clock) == x.shape[1]


@pytest.mark.parametrize(
    ("sizes", "context_kind"),
    [
        pytest.param([1] * T, "per-token", id="token-by-token-context-BTD"),
        pytest.param([5, 1, 7, 3, 8], "per-sequence", id="chunks-5-1-7-3-8-context-BD"),
        pytest.param([13, 11], None, id="chunks-13-11-no-context"),
    ],
)
def test_streaming_equals_whole_sequence(sizes, context_kind):
    stack = small_stack(3, D, H)
    stack.bus.set("acetylcholine", 0.8)
    stack.bus.set("serotonin", 0.3, block=1)
    x = torch.randn(B, T, D)
    context = {"per-token": torch.randn(B, T, D), "per-sequence": torch.randn(B, D), None: None}[context_kind]
    with torch.no_grad():
        _streaming_case(stack, x, context, sizes)


def test_streaming_spans_attention_and_scan_chunks():
    """T = 130 crosses the chunk sizes of the PyTorch spike attention (64) and the novelty scan (64)."""
    stack = small_stack(2, D, H, seed=3)
    x = torch.randn(1, 130, D)
    with torch.no_grad():
        _streaming_case(stack, x, None, [64, 1, 2, 63])


def test_zero_state_is_no_state_and_state_is_not_modified():
    stack = small_stack(2, D, H)
    x = torch.randn(B, T, D)
    with torch.no_grad():
        fresh = stack(x, return_state=True)
        zeros = stack.init_state(B)
        from_zeros = stack(x, state=zeros, return_state=True)
        assert torch.equal(fresh.hidden, from_zeros.hidden)
        snapshot = [t.clone() for block in fresh.state.blocks for t in block]
        stack(x, state=fresh.state, return_state=True)
        after = [t for block in fresh.state.blocks for t in block]
    assert all(torch.equal(a, b) for a, b in zip(snapshot, after, strict=True)), (
        "a call modified its input state"
    )
    assert isinstance(zeros, StackState) and int(zeros.clock) == 0


def test_levels_change_the_forward_pass():
    """NE raises the firing rate (input gain = threshold / gain); 5-HT lengthens every time constant."""
    stack = small_stack(1, D, H)
    x = torch.randn(B, 64, D)
    rates = []
    with torch.no_grad():
        for ne in (0.2, 0.5, 0.9):
            stack.bus.set("norepinephrine", ne)
            rates.append(float(stack(x).signals[0].firing_rate.mean()))
    assert rates[0] < rates[1] < rates[2], rates
    attention = stack.blocks[0].attention
    low, high = attention.log_decay(torch.tensor(0.1)), attention.log_decay(torch.tensor(0.9))
    assert (high > low).all() and (high < 0).all(), (low, high)  # less negative log decay: a longer window
    rwkv = stack.blocks[0].rwkv
    x_w = torch.randn(B, 8, D)
    low, high = rwkv.log_decay(x_w, torch.tensor(0.1)), rwkv.log_decay(x_w, torch.tensor(0.9))
    assert (high > low).all() and (high <= 0).all()


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "with-state"])
def test_torch_compile_fullgraph_matches_eager(chunked):
    """Dynamo captures the whole stack in one graph (``fullgraph=True``: no graph break) and the compiled
    forward and backward match eager. The ``eager`` backend keeps this fast; ``test_torch_compile_inductor``
    runs the real compiler (slow)."""
    torch._dynamo.reset()
    stack = small_stack(2, 16, 2)
    x, context = torch.randn(1, 6, 16), torch.randn(1, 16)
    state = stack.init_state(1) if chunked else None
    probe = torch.randn(1, 6, 16)
    compiled = torch.compile(stack, backend="eager", fullgraph=True)
    results = []
    for module in (stack, compiled):
        stack.zero_grad(set_to_none=True)
        out = module(x, context, state=state, return_state=chunked)
        (out.hidden * probe).sum().backward()
        results.append((out, {n: p.grad.clone() for n, p in stack.named_parameters()}))
    (ref, ref_grads), (out, grads) = results
    assert rel_err(out.hidden, ref.hidden) <= 1e-6
    if chunked:
        assert rel_err(out.state.blocks[1].rwkv, ref.state.blocks[1].rwkv) <= 1e-6
    for name, grad in ref_grads.items():
        assert rel_err(grads[name], grad) <= 1e-5, name


def test_torch_compile_fullgraph_through_the_triton_kernels():
    """The stack on the Triton kernels (the CUDA path; here under the interpreter) compiles in one graph: the
    kernels are PyTorch operators. Whole sequence with gradients, then a streamed token without; compiled and
    eager agree."""
    torch._dynamo.reset()
    stack = small_stack(2, 32, 2, ops=triton_ops())
    x, context, probe = torch.randn(1, 6, 32), torch.randn(1, 32), torch.randn(1, 6, 32)
    compiled = torch.compile(stack, backend="aot_eager", fullgraph=True)
    results = []
    for module in (stack, compiled):
        stack.zero_grad(set_to_none=True)
        out = module(x, context, state=stack.init_state(1), return_state=True)
        (out.hidden * probe).sum().backward()
        with torch.no_grad():
            step = module(x[:, :1], context, state=out.state, return_state=True)
        results.append((out, step, {n: p.grad.clone() for n, p in stack.named_parameters()}))
    (ref, ref_step, ref_grads), (out, step, grads) = results
    assert rel_err(out.hidden, ref.hidden) <= 1e-6 and rel_err(step.hidden, ref_step.hidden) <= 1e-6
    assert rel_err(step.state.blocks[1].rwkv, ref_step.state.blocks[1].rwkv) <= 1e-6
    for name, grad in ref_grads.items():
        assert rel_err(grads[name], grad) <= 1e-5, name
    # and the Triton path is the CUDA path: against the same stack on the PyTorch references
    default = small_stack(2, 32, 2)
    default.load_state_dict(stack.state_dict())
    assert rel_err(default(x, context).hidden, ref.hidden) <= 1e-4


def test_torch_compile_dynamic_lengths_share_a_graph_on_the_kernels():
    """With ``dynamic=True`` the stack on the kernels (the CUDA path; here under the interpreter) traces one
    graph for lengths of five, six and seven novelty-scan chunks (the scan has no loop over time: a loop
    specialised every length), and each length agrees with eager. (The kernels' own launch choices still
    split lengths into a few buckets: the LIF's time-parallel path from T = 256 on is another graph.)"""
    import torch._dynamo.utils as dynamo_utils

    torch._dynamo.reset()
    stack = small_stack(2, 32, 2, ops=triton_ops())
    context = torch.randn(1, 32)
    compiled = torch.compile(stack, backend="aot_eager", fullgraph=True, dynamic=True)
    graphs = []
    for T in (260, 330, 400):
        x = torch.randn(1, T, 32)
        assert rel_err(compiled(x, context).hidden, stack(x, context).hidden) <= 1e-6
        graphs.append(dynamo_utils.counters["stats"]["unique_graphs"])
    assert graphs[-1] == graphs[0], graphs


@pytest.mark.slow
def test_torch_compile_inductor():
    """The inductor-compiled stack (CPU) matches eager, forward and backward, and streams token by token.
    Compiling the three graphs takes about 1.5 minutes here from a cold cache."""
    torch._dynamo.reset()
    stack = small_stack(2, 32, 4)
    x = torch.randn(2, 8, 32, requires_grad=True)
    ref = stack(x)
    probe = torch.randn(2, 8, 32)  # a random projection: the mean square of a layer-normed output is constant
    (ref_grad,) = torch.autograd.grad((ref.hidden * probe).sum(), x)
    compiled = torch.compile(stack)
    out = compiled(x)
    (grad,) = torch.autograd.grad((out.hidden * probe).sum(), x)
    assert rel_err(out.hidden, ref.hidden) <= 1e-5
    assert rel_err(grad, ref_grad) <= 1e-4
    with torch.no_grad():
        state, outs = None, []
        for t in range(x.shape[1]):
            step = compiled(x[:, t : t + 1], state=state, return_state=True)
            state = step.state
            outs.append(step.hidden)
    assert rel_err(torch.cat(outs, 1), ref.hidden) <= 1e-5


@pytest.mark.slow
def test_streaming_at_issue_width():
    """d_model 1024, 16 heads, 6 blocks: chunked and token-by-token streaming equal the whole sequence."""
    stack = small_stack(6, 1024, 16)
    x = torch.randn(1, 20, 1024)
    with torch.no_grad():
        _streaming_case(stack, x, torch.randn(1, 1024), [7, 1, 1, 11])


def test_stack_on_the_naive_references():
    """The benchmark's peers run the same stack: the naive references are the CPU path itself (bit for bit),
    the specification forms (quadratic attention, token-by-token RWKV) agree to float32 rounding."""
    from t4dm.bench.stack import reference_ops, spec_ops

    ours = small_stack(2, D, H)
    peers = {
        "reference": CorticalStack(2, D, H, ops=reference_ops()),
        "spec": CorticalStack(2, D, H, ops=spec_ops()),
    }
    x = torch.randn(B, 70, D)
    with torch.no_grad():
        expected = ours(x, return_state=True)
        for name, stack in peers.items():
            stack.load_state_dict(ours.state_dict())
            out = stack(x, return_state=True)
            if name == "reference":
                assert torch.equal(out.hidden, expected.hidden)
            assert rel_err(out.hidden, expected.hidden) <= 1e-5, name
            step = stack(x[:, :1], state=out.state, return_state=True)
            ref_step = ours(x[:, :1], state=expected.state, return_state=True)
            assert rel_err(step.hidden, ref_step.hidden) <= 1e-5, name


def test_external_novelty_drives_the_gate():
    """A caller's novelty ``[B, T]`` (e.g. from T4DX search distances) replaces the block's own."""
    stack = small_stack(1, D, H)
    stack.bus.set("acetylcholine", 1.0)
    x = torch.randn(B, T, D)
    box = GlassBox(("gate", "novelty"))
    with torch.no_grad(), box.attach(stack):
        stack(x, novelty=torch.zeros(B, T))
        stack(x, novelty=torch.ones(B, T))
    gates, novelty = box.get(0, "gate"), box.get(0, "novelty")
    assert torch.equal(novelty[:, :T], torch.zeros(B, T)) and torch.equal(novelty[:, T:], torch.ones(B, T))
    assert bool((gates[:, T:] > gates[:, :T]).all())


def test_rows_with_their_own_clocks_continue_as_alone():
    """States of rows that have seen different numbers of tokens, joined into one batch (a clock per row),
    continue each row as it continues alone; the oscillator record becomes ``[B, T]``."""
    stack = small_stack(2, D, H, seed=5)
    prompts = [torch.randn(1, n, D) for n in (5, 9, 2)]
    more = torch.randn(3, 4, D)
    with torch.no_grad():
        states = [stack(p, return_state=True).state for p in prompts]
        joined = StackState.cat(states)
        assert joined.clock.tolist() == [5, 9, 2] and joined.batch_size == 3
        with GlassBox(("oscillator",)).attach(stack) as box:
            together = stack(more, state=joined, return_state=True)
        for b, state in enumerate(states):
            alone = stack(more[b : b + 1], state=state, return_state=True)
            assert rel_err(together.hidden[b : b + 1], alone.hidden) <= 1e-5
            assert int(together.state.clock[b]) == int(alone.state.clock)
            for i, (row_block, alone_block) in enumerate(
                zip(together.state.blocks, alone.state.blocks, strict=True)
            ):
                for name in BlockState._fields:
                    got, want = getattr(row_block, name)[b], getattr(alone_block, name)[0]
                    assert rel_err(got, want) <= 1e-5, (i, name)
        reordered = together.state.rows(torch.tensor([2, 0]))
        assert reordered.clock.tolist() == [2 + 4, 5 + 4] and reordered.batch_size == 2
    bias = box.get(-1, "oscillator")
    assert bias.shape == (3, 4)
    torch.testing.assert_close(bias[1], stack.oscillator(torch.tensor(9), 4))
    bad = StackState(joined.blocks, torch.tensor([1, 2]))
    with pytest.raises(InvalidInput) as info:
        stack(more, state=bad)
    assert info.value.field == "state.clock"
