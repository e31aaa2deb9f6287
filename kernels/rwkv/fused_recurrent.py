"""Token-by-token RWKV-6 in Triton (forward only): the fused decoding step and a recurrent reference.

One program per (value block, batch row, head) keeps its ``[K, BV]`` slice of the state in registers and
walks the tokens in order::

    o_t = scale * sum_k r_tk (S_kv + u_k k_tk v_tv)
    S   = exp(w_t)[:, None] * S + k_t v_t^T

For decoding, ``T = 1``: the state is read once and written once, which is all the step costs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import or_empty
from .chunk import AUTOTUNE, INTERPRET
from .interface import MAX_TRITON_K, check_rwkv6_inputs

__all__ = ["fused_recurrent_rwkv6", "fused_rwkv6_step"]


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
@triton.autotune(configs=_configs(), key=["K", "V", "BK"])
@triton.jit(do_not_specialize=["T"])
def _rwkv6_fused_recurrent_fwd_kernel(
    r,  # receptance [B, T, H, K]
    k,  # key [B, T, H, K]
    v,  # value [B, T, H, V]
    w,  # log decay [B, T, H, K]
    u,  # bonus [H, K]
    o,  # output [B, T, H, V]
    h0,  # initial state [B, H, K, V], or None
    ht,  # final state [N, H, K, V] float32, or None (N: batch rows, or packed sequences)
    cu_seqlens,  # [N + 1] int32 sequence starts of a packed batch (B = 1), or None
    scale,  # output scale
    T,  # sequence length
    H: tl.constexpr,  # heads
    K: tl.constexpr,  # key width
    V: tl.constexpr,  # value width
    BK: tl.constexpr,  # key block (>= K)
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
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_state = i_bh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]

    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + o_state, mask=m_kv, other=0.0).to(tl.float32)
    for t in range(0, T):
        o_row = (bos + t) * H + i_h
        b_r = tl.load(r + o_row * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_k = tl.load(k + o_row * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_w = tl.load(w + o_row * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + o_row * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_kv = b_k[:, None] * b_v[None, :]
        b_o = tl.sum((b_h + b_u[:, None] * b_kv) * b_r[:, None], axis=0) * scale
        tl.store(o + o_row * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
        b_h = b_h * tl.exp(b_w)[:, None] + b_kv
    if STORE_FINAL_STATE:
        tl.store(ht + o_state, b_h, mask=m_kv)


def fused_recurrent_rwkv6_fwd(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the recurrent forward on contiguous ``[B, T, H, *]`` inputs (``B = 1`` with ``cu_seqlens``, the
    int32 starts of the packed sequences: each has its own initial and final state)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    BK = max(16, triton.next_power_of_2(K))
    o = torch.empty(B, T, H, V, dtype=r.dtype, device=r.device)
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    ht = r.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None

    def grid(meta):
        return (triton.cdiv(V, meta["BV"]), N * H)

    _rwkv6_fused_recurrent_fwd_kernel[grid](
        r, k, v, w, u, o, initial_state, ht, cu_seqlens, scale, T, H=H, K=K, V=V, BK=BK
    )  # fmt: skip
    return o, ht


@torch.library.custom_op("t4dm::rwkv6_recurrent", mutates_args=())
def _rwkv6_recurrent_op(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fused_recurrent_rwkv6_fwd` as a PyTorch operator (forward only): ``(o, final state
    or [0])``, so that torch.compile and CUDA-graph capture of a decoding loop see one opaque call (eager
    dispatch adds ~8 µs a call on the 2-core VM: docs/benchmarks.md)."""
    o, ht = fused_recurrent_rwkv6_fwd(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens)
    return o, or_empty(ht, r)


@_rwkv6_recurrent_op.register_fake
def _(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens):
    B, T, H, K = r.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    ht = r.new_empty((N, H, K, V) if output_final_state else (0,), dtype=torch.float32)
    return r.new_empty(B, T, H, V), ht


def _check_triton_device(r: torch.Tensor) -> None:
    if r.dtype == torch.float64:
        raise ValueError("the Triton path takes float16, bfloat16 or float32, got float64")
    if r.shape[-1] > MAX_TRITON_K:
        raise ValueError(f"the Triton path takes K <= {MAX_TRITON_K}, got K={r.shape[-1]}")
    if not r.is_cuda and not INTERPRET:
        raise ValueError(
            f"the Triton kernels need CUDA tensors (got {r.device}); on CPU set TRITON_INTERPRET=1 "
            "before importing t4dm.kernels.rwkv"
        )


@torch.no_grad()
def fused_recurrent_rwkv6(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    *,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``rwkv6`` token by token in one Triton kernel; forward only (no autograd). Same arguments and
    results as :func:`t4dm.kernels.rwkv.rwkv6`. Used for prefill-free decoding and as the recurrent
    link in the tests' chain naive <-> recurrent <-> chunked."""
    scale = check_rwkv6_inputs(r, k, v, w, u, scale, initial_state, cu_seqlens=cu_seqlens)
    _check_triton_device(r)
    r, k, v, w, u = (x.contiguous() for x in (r, k, v, w, u))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    packed = None if cu_seqlens is None else cu_seqlens.to(torch.int32).contiguous()
    o, ht = _rwkv6_recurrent_op(r, k, v, w, u, float(scale), initial_state, output_final_state, packed)
    return o, (ht if output_final_state else None)


@torch.no_grad()
def fused_rwkv6_step(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step on already checked inputs (``r, k, w`` ``[B, H, K]``, ``v`` ``[B, H, V]``).
    Returns ``o`` ``[B, H, V]`` and a new float32 state; ``state`` is left as it was."""
    _check_triton_device(r)
    B, H, K = r.shape
    V = v.shape[-1]
    o, ht = _rwkv6_recurrent_op(
        r.reshape(B, 1, H, K).contiguous(),
        k.reshape(B, 1, H, K).contiguous(),
        v.reshape(B, 1, H, V).contiguous(),
        w.reshape(B, 1, H, K).contiguous(),
        u.contiguous(),
        float(scale),
        state.contiguous(),
        True,
        None,
    )
    return o.reshape(B, H, V), ht
