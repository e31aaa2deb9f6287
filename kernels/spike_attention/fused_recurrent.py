"""Spike attention token by token in Triton (forward only): the decoding step and a recurrent reference.

One program per (value block, batch row, head) keeps its ``[D, BV]`` slice of the state in registers::

    S   = gamma S + k_t v_t^T          (gamma = exp(log_decay[h]))
    o_t = scale * q_t^T S

For decoding, ``T = 1``: the state is read once and written once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import or_empty
from .chunk import AUTOTUNE, INTERPRET
from .interface import MAX_TRITON_D, check_spike_attention_inputs

__all__ = ["fused_recurrent_spike_attention", "fused_spike_attention_step"]


def _configs() -> list[triton.Config]:
    if INTERPRET or not AUTOTUNE:
        return [triton.Config({"BV": 32}, num_warps=2)]
    return [triton.Config({"BV": bv}, num_warps=nw) for bv in (32, 64) for nw in (2, 4)]


@triton.heuristics(
    {
        "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
        "STORE_FINAL_STATE": lambda args: args["ht"] is not None,
        "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
    }
)
@triton.autotune(configs=_configs(), key=["D", "V", "BD"])
@triton.jit(do_not_specialize=["T"])
def _spike_attention_fused_recurrent_fwd_kernel(
    q,  # query [B, T, H, D]
    k,  # key [B, T, H, D]
    v,  # value [B, T, H, V]
    log_decay,  # per-head log decay [H]
    o,  # output [B, T, H, V]
    h0,  # initial state [B, H, D, V], or None
    ht,  # final state [N, H, D, V] float32, or None (N: batch rows, or packed sequences)
    cu_seqlens,  # [N + 1] int32 sequence starts of a packed batch (B = 1), or None
    scale,  # output scale
    T,  # sequence length
    H: tl.constexpr,  # heads
    D: tl.constexpr,  # query/key width
    V: tl.constexpr,  # value width
    BD: tl.constexpr,  # query/key block (>= D)
    BV: tl.constexpr,  # value block of this program (autotuned)
    USE_INITIAL_STATE: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H  # i_b: the batch row, or the packed sequence
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_b).to(tl.int64)
        T = (tl.load(cu_seqlens + i_b + 1).to(tl.int64) - bos).to(tl.int32)
    else:
        bos = i_b.to(tl.int64) * T
    o_d = tl.arange(0, BD)
    o_v = i_v * BV + tl.arange(0, BV)
    m_d = o_d < D
    m_v = o_v < V
    m_dv = m_d[:, None] & m_v[None, :]
    o_state = i_bh.to(tl.int64) * D * V + o_d[:, None] * V + o_v[None, :]

    b_gamma = tl.exp(tl.load(log_decay + i_h).to(tl.float32))
    b_h = tl.zeros([BD, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + o_state, mask=m_dv, other=0.0).to(tl.float32)
    for t in range(0, T):
        o_row = (bos + t) * H + i_h
        b_q = tl.load(q + o_row * D + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_k = tl.load(k + o_row * D + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_v = tl.load(v + o_row * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_h = b_h * b_gamma + b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_h * b_q[:, None], axis=0) * scale
        tl.store(o + o_row * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if STORE_FINAL_STATE:
        tl.store(ht + o_state, b_h, mask=m_dv)


def fused_recurrent_spike_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the recurrent forward on contiguous ``[B, T, H, *]`` inputs (``B = 1`` with ``cu_seqlens``, the
    int32 starts of the packed sequences: each has its own initial and final state)."""
    B, T, H, D = q.shape
    V = v.shape[-1]
    BD = max(16, triton.next_power_of_2(D))
    o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    ht = q.new_empty(N, H, D, V, dtype=torch.float32) if output_final_state else None

    def grid(meta):
        return (triton.cdiv(V, meta["BV"]), N * H)

    _spike_attention_fused_recurrent_fwd_kernel[grid](
        q, k, v, log_decay, o, initial_state, ht, cu_seqlens, scale, T, H=H, D=D, V=V, BD=BD
    )  # fmt: skip
    return o, ht


@torch.library.custom_op("t4dm::spike_attention_recurrent", mutates_args=())
def _spike_attention_recurrent_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fused_recurrent_spike_attention_fwd` as a PyTorch operator (forward only): ``(o, final state
    or [0])``, so that torch.compile and CUDA-graph capture of a decoding loop see one opaque call (eager
    dispatch adds ~8 µs a call on the 2-core VM: docs/benchmarks.md)."""
    o, ht = fused_recurrent_spike_attention_fwd(
        q, k, v, log_decay, scale, initial_state, output_final_state, cu_seqlens
    )
    return o, or_empty(ht, q)


@_spike_attention_recurrent_op.register_fake
def _(q, k, v, log_decay, scale, initial_state, output_final_state, cu_seqlens):
    B, T, H, D = q.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    ht = q.new_empty((N, H, D, V) if output_final_state else (0,), dtype=torch.float32)
    return q.new_empty(B, T, H, V), ht


def _check_triton_device(q: torch.Tensor) -> None:
    if q.dtype == torch.float64:
        raise ValueError("the Triton path takes float16, bfloat16 or float32, got float64")
    if q.shape[-1] > MAX_TRITON_D:
        raise ValueError(f"the Triton path takes D <= {MAX_TRITON_D}, got D={q.shape[-1]}")
    if not q.is_cuda and not INTERPRET:
        raise ValueError(
            f"the Triton kernels need CUDA tensors (got {q.device}); on CPU set TRITON_INTERPRET=1 "
            "before importing t4dm.kernels.spike_attention"
        )


@torch.no_grad()
def fused_recurrent_spike_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    *,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Spike attention token by token in one Triton kernel; forward only (no autograd). Returns
    ``(o, final_state or None)``; the recurrent link in the tests' chain naive <-> recurrent <-> chunked."""
    scale = check_spike_attention_inputs(q, k, v, log_decay, scale, initial_state, cu_seqlens=cu_seqlens)
    _check_triton_device(q)
    q, k, v, log_decay = (x.contiguous() for x in (q, k, v, log_decay))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    packed = None if cu_seqlens is None else cu_seqlens.to(torch.int32).contiguous()
    o, ht = _spike_attention_recurrent_op(
        q, k, v, log_decay, float(scale), initial_state, output_final_state, packed
    )
    return o, (ht if output_final_state else None)


@torch.no_grad()
def fused_spike_attention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    state: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step on already checked inputs (``q, k`` ``[B, H, D]``, ``v`` ``[B, H, V]``).
    Returns ``o`` ``[B, H, V]`` and a new float32 state; ``state`` is left as it was."""
    _check_triton_device(q)
    B, H, D = q.shape
    V = v.shape[-1]
    o, ht = _spike_attention_recurrent_op(
        q.reshape(B, 1, H, D).contiguous(),
        k.reshape(B, 1, H, D).contiguous(),
        v.reshape(B, 1, H, V).contiguous(),
        log_decay.contiguous(),
        float(scale),
        state.contiguous(),
        True,
        None,
    )
    return o.reshape(B, H, V), ht
