"""Shared helpers of the spiking tests."""

from __future__ import annotations

import torch

from t4dm.spiking import CorticalStack, GlassBox

#: Recorded in the streaming comparisons: both spiking populations of every block.
SPIKE_KINDS = ("spikes", "qk_spikes")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64, after a NaN/inf check."""
    out, ref = out.detach(), ref.detach().double()
    assert torch.isfinite(out).all(), f"{int((~torch.isfinite(out)).sum())} non-finite values"
    return float((out.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def spike_mismatches(box_a: GlassBox, box_b: GlassBox, n_blocks: int) -> dict[str, int]:
    """Number of differing spikes per block and population (only the non-zero entries)."""
    out = {}
    for block in range(n_blocks):
        for kind in SPIKE_KINDS:
            a, b = box_a.get(block, kind), box_b.get(block, kind)
            assert a.shape == b.shape, (kind, a.shape, b.shape)
            differ = int((a != b).sum())
            if differ:
                first = (a != b).nonzero()[0].tolist()
                out[f"block {block} {kind} (first at [b, t, n] = {first})"] = differ
    return out


def small_stack(
    n_blocks: int = 2, d_model: int = 32, n_heads: int = 4, seed: int = 0, **kwargs
) -> CorticalStack:
    torch.manual_seed(seed)
    return CorticalStack(n_blocks, d_model, n_heads, **kwargs)


def run_in_chunks(
    stack: CorticalStack, x: torch.Tensor, context: torch.Tensor | None, sizes: list[int], box: GlassBox
):
    """Run ``x`` chunk by chunk (``sizes`` tokens each) carrying the state; returns (hidden, final state)."""
    assert sum(sizes) == x.shape[1]
    state, outputs, start = None, [], 0
    with box.attach(stack):
        for size in sizes:
            ctx = None if context is None or context.dim() == 2 else context[:, start : start + size]
            if context is not None and context.dim() == 2:
                ctx = context
            out = stack(x[:, start : start + size], ctx, state=state, return_state=True)
            state = out.state
            outputs.append(out.hidden)
            start += size
    return torch.cat(outputs, dim=1), state


def triton_ops():
    """:class:`~t4dm.spiking.ops.SpikingOps` that run the Triton paths on any device: on the CPU under
    ``TRITON_INTERPRET=1`` (set by tests/conftest.py), at small sizes."""
    from t4dm.kernels.lif import fused
    from t4dm.kernels.rwkv.chunk import chunk_rwkv6
    from t4dm.kernels.rwkv.fused_recurrent import fused_rwkv6_step
    from t4dm.kernels.spike_attention.chunk import chunk_spike_attention
    from t4dm.kernels.spike_attention.fused_recurrent import fused_spike_attention_step
    from t4dm.spiking.ops import SpikingOps

    def lif(x, tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True, surrogate="sigmoid", alpha=4.0,
            detach_reset=False, time_dim=0, v0=None, return_membrane=False):  # fmt: skip
        spikes, v_final = fused.lif_multistep_impl(
            x,
            tau,
            v_threshold,
            v_reset,
            decay_input,
            surrogate,
            alpha,
            detach_reset,
            time_dim,
            v0,
            backend="triton",
        )
        return (spikes, v_final) if return_membrane else spikes

    def attention(q, k, v, ld, scale=None, *, initial_state=None, output_final_state=False, check_decay=True):
        o, ht = chunk_spike_attention(q, k, v, ld, scale, initial_state, output_final_state)
        return (o, ht) if output_final_state else o

    def attention_step(q, k, v, ld, state, scale=None, *, check_decay=True):
        return fused_spike_attention_step(q, k, v, ld, state, q.shape[-1] ** -0.5 if scale is None else scale)

    def rwkv(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, *, check_decay=True):
        return chunk_rwkv6(r, k, v, w, u, scale, initial_state, output_final_state)

    def rwkv_step(r, k, v, w, u, state, scale=None, *, check_decay=True):
        return fused_rwkv6_step(r, k, v, w, u, state, r.shape[-1] ** -0.5 if scale is None else scale)

    return SpikingOps(lif, attention, attention_step, rwkv, rwkv_step, name="triton")
