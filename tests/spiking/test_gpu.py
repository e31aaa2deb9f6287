"""GPU checks of the cortical stack (``@pytest.mark.gpu``: skipped without CUDA; run by scripts/gpu_stack.sh).

1. Each block on the Triton kernels against the same block on the kernels' PyTorch references, on the
   same GPU, fed the same input: spikes of both populations identical (the LIF kernel is bit-exact and its
   input is computed by the same torch ops), the block's update ``y − x`` and every gradient within 1e-4
   relative (float32; the kernel tests hold each kernel to 1e-5, a block composes spike attention, RWKV and
   their group norms). Blocks are compared one at a time because a single spike that flips on float32
   rounding (Triton vs PyTorch attention) changes the next blocks' inputs by O(1) — whole-stack outputs
   are only comparable spike for spike.
2. Streaming on CUDA: token by token (the fused step kernels) and chunk by chunk equal the whole sequence
   (chunked Triton kernels): spikes exactly, float32 within 1e-5.
3. The issue's width in bfloat16: forward and backward finite, float32 states, firing 1–30 %, a gradient
   on every parameter.
"""

from __future__ import annotations

import pytest
import torch

from t4dm.spiking import CorticalStack, GlassBox
from tests.spiking.helpers import SPIKE_KINDS, rel_err, run_in_chunks, spike_mismatches

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _no_tf32():
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


def _pair(n_blocks: int, D: int, H: int):
    from t4dm.bench.stack import reference_ops

    torch.manual_seed(0)
    ours = CorticalStack(n_blocks, D, H).cuda()
    ref = CorticalStack(n_blocks, D, H, ops=reference_ops()).cuda()
    ref.load_state_dict(ours.state_dict())
    for stack in (ours, ref):
        stack.bus.set("norepinephrine", 0.6)
        stack.bus.set("acetylcholine", 0.7)
    return ours, ref


@pytest.mark.parametrize(("B", "T", "D", "H"), [(2, 300, 1024, 16), (1, 63, 256, 4)], ids=lambda v: str(v))
def test_gpu_blocks_match_reference(B, T, D, H):
    ours, ref = _pair(3, D, H)
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(B, T, D, device="cuda", generator=gen)
    context = ours.context_norm(torch.randn(B, T, D, device="cuda", generator=gen)).detach()
    bias = ours.oscillator(torch.tensor(0, device="cuda"), T)
    for i in range(3):
        results = []
        for stack in (ours, ref):
            block = stack.blocks[i]
            block.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_()
            box = GlassBox(SPIKE_KINDS)
            with box.attach(block):
                y, _, signals = block(xi, stack.bus.levels[i], context=context, bias=bias)
            update = y - xi
            grad_out = torch.randn(
                B, T, D, device="cuda", generator=torch.Generator(device="cuda").manual_seed(2)
            )
            update.backward(grad_out)
            grads = {n: p.grad.detach().clone() for n, p in block.named_parameters() if p.grad is not None}
            results.append((update.detach(), xi.grad.detach(), grads, box, signals))
        (u_ours, gx_ours, g_ours, box_ours, _), (u_ref, gx_ref, g_ref, box_ref, _) = results
        for kind in SPIKE_KINDS:
            a, b = box_ours.get(i, kind), box_ref.get(i, kind)
            assert torch.equal(a, b), f"block {i} {kind}: {int((a != b).sum())} spikes differ"
        assert rel_err(u_ours, u_ref) <= 1e-4, f"block {i} update"
        assert rel_err(gx_ours, gx_ref) <= 1e-4, f"block {i} input gradient"
        assert set(g_ours) == set(g_ref) == {n for n, _ in ours.blocks[i].named_parameters()}
        for name in g_ref:
            assert rel_err(g_ours[name], g_ref[name]) <= 1e-4, f"block {i} gradient of {name}"
        x = (u_ref + x).detach()  # the next block sees the reference's output in both runs


@pytest.mark.parametrize("sizes", [[1] * 48, [20, 1, 27]], ids=["token-by-token", "chunks-20-1-27"])
def test_gpu_streaming_equals_whole(sizes):
    torch.manual_seed(0)
    stack = CorticalStack(3, 256, 4).cuda()
    x = torch.randn(2, 48, 256, device="cuda")
    context = torch.randn(2, 256, device="cuda")
    whole_box, chunk_box = GlassBox(SPIKE_KINDS), GlassBox(SPIKE_KINDS)
    with torch.no_grad():
        with whole_box.attach(stack):
            whole = stack(x, context, return_state=True)
        hidden, state = run_in_chunks(stack, x, context, sizes, chunk_box)
    flips = spike_mismatches(whole_box, chunk_box, 3)
    assert not flips, f"spikes differ between whole and streamed runs: {flips}"
    assert rel_err(hidden, whole.hidden) <= 1e-5
    for i, (a, b) in enumerate(zip(state.blocks, whole.state.blocks, strict=True)):
        for name in a._fields:
            assert rel_err(getattr(a, name), getattr(b, name)) <= 1e-5, f"block {i} state {name}"


def test_gpu_issue_width_bfloat16():
    torch.manual_seed(0)
    stack = CorticalStack(6, 1024, 16).cuda().to(torch.bfloat16)
    stack.bus.set("norepinephrine", 0.6)
    x = torch.randn(2, 512, 1024, device="cuda", dtype=torch.bfloat16)
    context = torch.randn(2, 1024, device="cuda", dtype=torch.bfloat16)
    box = GlassBox(SPIKE_KINDS, to_cpu=False)
    with box.attach(stack):
        out = stack(x, context, return_state=True)
    assert out.hidden.dtype == torch.bfloat16 and torch.isfinite(out.hidden.float()).all()
    for block_state in out.state.blocks:
        assert all(t.dtype == torch.float32 for t in block_state)
    for b in range(6):
        for kind in SPIKE_KINDS:
            rate = float(box.get(b, kind).float().mean())
            assert 0.01 <= rate <= 0.30, f"block {b} {kind} fires {rate:.3f}"
    (out.hidden.float() * torch.randn_like(out.hidden.float())).sum().backward()  # |LN(·)|² is constant
    for name, p in stack.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad.float()).all(), name
        assert float(p.grad.float().abs().max()) > 0, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_cuda_graph_decoder_equals_plain_steps(dtype):
    """4. StackDecoder's CUDA graph (the whole six-block step as one replay) against plain streaming, token by
    token, on the same kernels: the same hidden states and states, bit for bit (the graph replays the very
    kernels the plain step launches); and it is faster per token than the plain step."""
    import time

    from t4dm.spiking import StackDecoder

    torch.manual_seed(0)
    stack = CorticalStack(6, 1024, 16).cuda().to(dtype).eval()
    gen = torch.Generator(device="cuda").manual_seed(3)
    B, steps = 4, 24
    prompt = torch.randn(B, 64, 1024, device="cuda", generator=gen, dtype=dtype)
    tokens = torch.randn(B, steps, 1024, device="cuda", generator=gen, dtype=dtype)
    contexts = torch.randn(steps, B, 1024, device="cuda", generator=gen, dtype=dtype)
    with torch.no_grad():
        start = stack(prompt, return_state=True).state
        state, want = start, []
        for t in range(steps):
            out = stack(tokens[:, t : t + 1], contexts[t], state=state, return_state=True)
            want.append(out.hidden)
            state = out.state
        decoder = StackDecoder(stack, start, context=True)
        assert decoder.graph is not None
        got = [decoder(tokens[:, t : t + 1], contexts[t]).hidden.clone() for t in range(steps)]
        assert torch.equal(torch.cat(got, 1), torch.cat(want, 1))
        for mine, theirs in zip(decoder.state.blocks, state.blocks, strict=True):
            for a, b in zip(mine, theirs, strict=True):
                assert torch.equal(a, b)

        def per_token(step) -> float:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(50):
                step()
            torch.cuda.synchronize()
            return (time.perf_counter() - t0) / 50

        plain = per_token(lambda: stack(tokens[:, :1], contexts[0], state=state, return_state=True))
        graphed = per_token(lambda: decoder(tokens[:, :1], contexts[0]))
    print(
        f"six-block step, B={B}, d=1024, {dtype}: plain {plain * 1e3:.2f} ms, CUDA graph {graphed * 1e3:.2f} ms"
    )
    assert graphed < plain
