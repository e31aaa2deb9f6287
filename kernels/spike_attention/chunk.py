"""Chunked spike attention in Triton: forward, backward, their operators (``torch.ops.t4dm.spike_attention_*``).

With a per-head decay ``gamma = 2^ld`` (``ld = log_decay * log2(e)``), a chunk of ``n <= BT`` tokens at
positions ``i`` entering with state ``h`` (``[D, V]``)::

    W[i, j] = gamma^(i - j) for j <= i, else 0                  the STDP window inside the chunk
    o       = scale * ((q k^T * W) @ v + (q * gamma^(i+1)) @ h)
    h      <- gamma^n h + (k * gamma^(n-1-j))^T @ v

Every power has a non-negative exponent, so nothing overflows; all products are tensor-core matmuls.
One program per (value block, batch row, head) walks the chunks in order with its ``[D, BV]`` slice of
the state in registers (no state round-trip through memory); the forward can store the state at every
chunk start for the backward, which walks the chunks in reverse with ``dh`` in registers and computes

    dP = (do v^T * W) * scale                     dq = dP @ k + gamma^(i+1) * (do @ h^T) * scale
    dk = dP^T @ q + gamma^(n-1-j) * (v @ dh^T)    dv = (q k^T * W * scale)^T @ do + (k * gamma^(n-1-j)) @ dh
    dh <- gamma^n dh + scale * (q * gamma^(i+1))^T @ do

and the log-decay gradient from the identity (``t`` the global position, ``h_T`` the final state)

    d log_decay = sum_t (t + 1) (q_t . dq_t - k_t . dk_t) + T <dh_T, h_T>

which holds because the output depends on ``log_decay`` only through ``exp(log_decay * (t + 1))``
scaling ``q_t`` and ``exp(-log_decay * (s + 1))`` scaling ``k_s``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..checks import or_empty
from ..spans import sequence_span
from ..varlen import Chunks
from .interface import MAX_TRITON_D, check_spike_attention_inputs

__all__ = [
    "chunk_spike_attention",
    "spike_attention_bwd",
    "spike_attention_fwd",
]

try:
    INTERPRET = bool(triton.knobs.runtime.interpret)
except AttributeError:  # triton < 3.4
    INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
AUTOTUNE = os.environ.get("T4DM_AUTOTUNE", "1") != "0"

LOG2E = tl.constexpr(1.4426950408889634)  # a constexpr: compiled kernels read no other globals
DEFAULT_CHUNK_SIZE = 64


def _configs() -> list[triton.Config]:
    # the interpreter runs every config, and T4DM_AUTOTUNE=0 skips tuning (tests): one config
    if INTERPRET or not AUTOTUNE:
        return [triton.Config({}, num_warps=4, num_stages=2)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (1, 2)]


@triton.heuristics(
    {
        "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
        "STORE_FINAL_STATE": lambda args: args["ht"] is not None,
        "STORE_CHUNK_STATES": lambda args: args["hc"] is not None,
        "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
    }
)
@triton.autotune(configs=_configs(), key=["D", "V", "BT", "BD", "BV", "DOT_PRECISION"])
@triton.jit(do_not_specialize=["T"])
def _spike_attention_fwd_kernel(
    q,  # query [B, T, H, D]
    k,  # key [B, T, H, D]
    v,  # value [B, T, H, V]
    log_decay,  # per-head log decay [H], < 0
    o,  # output [B, T, H, V]
    h0,  # initial state [N, H, D, V], or None
    ht,  # final state [N, H, D, V] float32, or None
    hc,  # state at each chunk start [chunks, H, D, V] float32 (saved for the backward), or None
    cu_seqlens,  # sequence starts and end [N + 1] in the packed tokens, or None
    chunk_offsets,  # first chunk of each sequence [N + 1], or None
    scale,  # output scale
    T,  # sequence length (unused with cu_seqlens)
    H: tl.constexpr,  # heads
    D: tl.constexpr,  # query/key width
    V: tl.constexpr,  # value width
    BT: tl.constexpr,  # chunk length
    BD: tl.constexpr,  # query/key block (>= D: one block)
    BV: tl.constexpr,  # value block of this program
    DOT_PRECISION: tl.constexpr,  # "tf32x3" for float32 inputs, else "tf32" (unused for 16-bit)
    USE_INITIAL_STATE: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr,
    STORE_CHUNK_STATES: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_seq, i_h = i_bh // H, i_bh % H
    bos, T, c0 = sequence_span(cu_seqlens, chunk_offsets, i_seq, T, BT, IS_VARLEN)
    NT = tl.cdiv(T, BT)
    DT = o.dtype.element_ty  # matrix products take the input dtype, accumulate in float32

    o_i = tl.arange(0, BT)
    o_d = tl.arange(0, BD)
    o_v = i_v * BV + tl.arange(0, BV)
    m_d = o_d < D
    m_v = o_v < V
    m_dv = m_d[:, None] & m_v[None, :]
    o_state = o_d[:, None] * V + o_v[None, :]

    b_ld = tl.load(log_decay + i_h).to(tl.float32) * LOG2E
    b_distance = (o_i[:, None] - o_i[None, :]).to(tl.float32)
    b_window = tl.exp2(tl.where(o_i[:, None] >= o_i[None, :], b_distance * b_ld, float("-inf")))
    b_decay_q = tl.exp2((o_i + 1).to(tl.float32) * b_ld)  # from the chunk start to each query

    b_h = tl.zeros([BD, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_bh.to(tl.int64) * D * V + o_state, mask=m_dv, other=0.0).to(tl.float32)

    for i_t in range(0, NT):
        if STORE_CHUNK_STATES:
            tl.store(hc + ((c0 + i_t) * H + i_h) * D * V + o_state, b_h, mask=m_dv)
        o_t = i_t * BT + o_i
        m_t = o_t < T
        o_row = (bos + o_t) * H + i_h
        m_td = m_t[:, None] & m_d[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        p_qk = o_row[:, None] * D + o_d[None, :]
        p_vo = o_row[:, None] * V + o_v[None, :]
        b_q = tl.load(q + p_qk, mask=m_td, other=0.0)
        b_k = tl.load(k + p_qk, mask=m_td, other=0.0)
        b_v = tl.load(v + p_vo, mask=m_tv, other=0.0)
        n = tl.minimum(T - i_t * BT, BT)  # tokens in this chunk
        b_decay_k = tl.exp2(tl.where(o_i < n, (n - 1 - o_i).to(tl.float32) * b_ld, float("-inf")))

        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * b_window
        b_o = tl.dot(b_s.to(DT), b_v, input_precision=DOT_PRECISION)
        b_qd = (b_q.to(tl.float32) * b_decay_q[:, None]).to(DT)
        b_o += tl.dot(b_qd, b_h.to(DT), input_precision=DOT_PRECISION)
        tl.store(o + p_vo, (b_o * scale).to(o.dtype.element_ty), mask=m_tv)

        b_kd = (b_k.to(tl.float32) * b_decay_k[:, None]).to(DT)
        b_h = b_h * tl.exp2(n.to(tl.float32) * b_ld)
        b_h += tl.dot(tl.trans(b_kd), b_v, input_precision=DOT_PRECISION)

    if STORE_FINAL_STATE:
        tl.store(ht + i_bh.to(tl.int64) * D * V + o_state, b_h, mask=m_dv)


@triton.heuristics(
    {
        "USE_FINAL_STATE_GRADIENT": lambda args: args["dht"] is not None,
        "STORE_INITIAL_STATE_GRADIENT": lambda args: args["dh0"] is not None,
        "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
    }
)
@triton.autotune(configs=_configs(), key=["D", "V", "BT", "BD", "BV", "DOT_PRECISION"])
@triton.jit(do_not_specialize=["T", "total"])
def _spike_attention_bwd_kernel(
    q,  # query [B, T, H, D]
    k,  # key [B, T, H, D]
    v,  # value [B, T, H, V]
    log_decay,  # per-head log decay [H]
    hc,  # state at each chunk start [chunks, H, D, V] float32, from the forward
    do,  # output gradient [B, T, H, V]
    dht,  # final-state gradient [N, H, D, V], or None
    dq,  # query gradient of this value block [NV, B, T, H, D] (float32 when NV > 1)
    dk,  # key gradient of this value block [NV, B, T, H, D] (float32 when NV > 1)
    dv,  # value gradient [B, T, H, V]
    dh0,  # initial-state gradient [N, H, D, V] float32, or None
    dld,  # log-decay gradient of this value block and sequence [NV, N, H] float32
    cu_seqlens,  # sequence starts and end [N + 1] in the packed tokens, or None
    chunk_offsets,  # first chunk of each sequence [N + 1], or None
    scale,  # output scale
    T,  # sequence length (unused with cu_seqlens)
    total,  # B * T: tokens in the batch
    H: tl.constexpr,  # heads
    D: tl.constexpr,  # query/key width
    V: tl.constexpr,  # value width
    BT: tl.constexpr,  # chunk length
    BD: tl.constexpr,  # query/key block (>= D)
    BV: tl.constexpr,  # value block of this program
    DOT_PRECISION: tl.constexpr,  # "tf32x3" for float32 inputs, else "tf32" (unused for 16-bit)
    USE_FINAL_STATE_GRADIENT: tl.constexpr,
    STORE_INITIAL_STATE_GRADIENT: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    N = tl.num_programs(1) // H
    i_seq, i_h = i_bh // H, i_bh % H
    bos, T, c0 = sequence_span(cu_seqlens, chunk_offsets, i_seq, T, BT, IS_VARLEN)
    NT = tl.cdiv(T, BT)
    DT = dv.dtype.element_ty

    o_i = tl.arange(0, BT)
    o_d = tl.arange(0, BD)
    o_v = i_v * BV + tl.arange(0, BV)
    m_d = o_d < D
    m_v = o_v < V
    m_dv = m_d[:, None] & m_v[None, :]
    o_state = o_d[:, None] * V + o_v[None, :]

    b_ld = tl.load(log_decay + i_h).to(tl.float32) * LOG2E
    b_distance = (o_i[:, None] - o_i[None, :]).to(tl.float32)
    b_window = tl.exp2(tl.where(o_i[:, None] >= o_i[None, :], b_distance * b_ld, float("-inf"))) * scale
    b_decay_q = tl.exp2((o_i + 1).to(tl.float32) * b_ld)

    b_dh = tl.zeros([BD, BV], dtype=tl.float32)  # dL/dS at the end of the current chunk
    if USE_FINAL_STATE_GRADIENT:
        b_dh += tl.load(dht + i_bh.to(tl.int64) * D * V + o_state, mask=m_dv, other=0.0).to(tl.float32)
    # the same sum with each use weighted by its distance from the chunk end: d(dL/dS)/d(log_decay)
    b_dhd = tl.zeros([BD, BV], dtype=tl.float32)
    b_dld = tl.zeros([BT], dtype=tl.float32)
    b_causal_distance = tl.where(o_i[:, None] >= o_i[None, :], b_distance, 0.0)

    for i_n in range(0, NT):
        i_t = NT - 1 - i_n
        o_t = i_t * BT + o_i
        m_t = o_t < T
        o_row = (bos + o_t) * H + i_h
        m_td = m_t[:, None] & m_d[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        p_qk = o_row[:, None] * D + o_d[None, :]
        p_vo = o_row[:, None] * V + o_v[None, :]
        b_q = tl.load(q + p_qk, mask=m_td, other=0.0)
        b_k = tl.load(k + p_qk, mask=m_td, other=0.0)
        b_v = tl.load(v + p_vo, mask=m_tv, other=0.0)
        b_do = tl.load(do + p_vo, mask=m_tv, other=0.0)
        b_h = tl.load(hc + ((c0 + i_t) * H + i_h) * D * V + o_state, mask=m_dv, other=0.0)
        n = tl.minimum(T - i_t * BT, BT)
        b_key_distance = (n - 1 - o_i).to(tl.float32)  # from each key to the chunk end
        b_decay_k = tl.exp2(tl.where(o_i < n, b_key_distance * b_ld, float("-inf")))

        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * b_window  # scaled scores
        b_dov = tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PRECISION)
        b_dp = b_dov * b_window
        b_vdh = tl.dot(b_v, tl.trans(b_dh).to(DT), input_precision=DOT_PRECISION)  # [BT, BD]
        b_vdhd = tl.dot(b_v, tl.trans(b_dhd).to(DT), input_precision=DOT_PRECISION)

        b_dq = tl.dot(b_dp.to(DT), b_k, input_precision=DOT_PRECISION)
        b_dq += (
            tl.dot(b_do, tl.trans(b_h).to(DT), input_precision=DOT_PRECISION) * (b_decay_q * scale)[:, None]
        )
        b_dk = tl.dot(tl.trans(b_dp).to(DT), b_q, input_precision=DOT_PRECISION)
        b_dk += b_vdh * b_decay_k[:, None]
        b_kd = (b_k.to(tl.float32) * b_decay_k[:, None]).to(DT)
        b_dv = tl.dot(tl.trans(b_s).to(DT), b_do, input_precision=DOT_PRECISION)
        b_dv += tl.dot(b_kd, b_dh.to(DT), input_precision=DOT_PRECISION)

        # d log_decay: every (query t, key s) pair contributes (t - s) times its term of the loss
        b_dld += tl.sum(b_causal_distance * b_s * b_dov, axis=1)  # both in this chunk
        b_kf = b_k.to(tl.float32)
        b_dld += b_decay_k * (b_key_distance * tl.sum(b_kf * b_vdh, axis=1) + tl.sum(b_kf * b_vdhd, axis=1))

        o_part = i_v.to(tl.int64) * total * H * D
        tl.store(dq + o_part + p_qk, b_dq.to(dq.dtype.element_ty), mask=m_td)
        tl.store(dk + o_part + p_qk, b_dk.to(dk.dtype.element_ty), mask=m_td)
        tl.store(dv + p_vo, b_dv.to(dv.dtype.element_ty), mask=m_tv)

        # move dh and its distance-weighted twin from the chunk end to the chunk start (n steps back)
        b_gamma_n = tl.exp2(n.to(tl.float32) * b_ld)
        b_qf = b_q.to(tl.float32) * (b_decay_q * scale)[:, None]
        b_qd = (b_qf * (o_i + 1).to(tl.float32)[:, None]).to(DT)
        b_dhd = b_gamma_n * (b_dhd + n.to(tl.float32) * b_dh)
        b_dhd += tl.dot(tl.trans(b_qd), b_do, input_precision=DOT_PRECISION)
        b_dh = b_gamma_n * b_dh + tl.dot(tl.trans(b_qf.to(DT)), b_do, input_precision=DOT_PRECISION)

    # the initial state sits one step before token 0 (zeros when there is none)
    b_h0 = tl.load(hc + (c0 * H + i_h) * D * V + o_state, mask=m_dv, other=0.0)
    tl.store(dld + (i_v * N + i_seq) * H + i_h, tl.sum(b_dld, axis=0) + tl.sum(b_h0 * b_dhd))
    if STORE_INITIAL_STATE_GRADIENT:
        tl.store(dh0 + i_bh.to(tl.int64) * D * V + o_state, b_dh, mask=m_dv)


def _dot_precision(dtype: torch.dtype) -> str:
    # float32: three tf32 tensor-core products (error ~2^-22, near float32's own). "ieee" runs on the FMA
    # units, and compiling its backward for sm_90 at BT = BD = BV = 64 took 125 s per configuration
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _blocks(D: int, V: int, block_v: int | None) -> tuple[int, int]:
    BD = max(16, triton.next_power_of_2(D))
    BV = block_v if block_v is not None else max(16, min(64, triton.next_power_of_2(V)))
    return BD, BV


def spike_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    save_states: bool,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    block_v: int | None = None,
    chunks: Chunks | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the forward. Returns ``o``, the final state (or None) and the chunk-start states (or None)."""
    B, T, H, D = q.shape
    V = v.shape[-1]
    BT = chunk_size
    BD, BV = _blocks(D, V, block_v)
    NV = triton.cdiv(V, BV)
    c = Chunks(B, T, BT, None) if chunks is None else chunks
    o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
    ht = q.new_empty(c.n_seq, H, D, V, dtype=torch.float32) if output_final_state else None
    hc = q.new_empty(c.n_chunks, H, D, V, dtype=torch.float32) if save_states else None
    _spike_attention_fwd_kernel[(NV, c.n_seq * H)](
        q, k, v, log_decay, o, initial_state, ht, hc, c.cu_seqlens, c.chunk_offsets, scale, T,
        H=H, D=D, V=V, BT=BT, BD=BD, BV=BV, DOT_PRECISION=_dot_precision(q.dtype),
    )  # fmt: skip
    return o, ht, hc


def spike_attention_bwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float,
    hc: torch.Tensor,
    do: torch.Tensor,
    dht: torch.Tensor | None,
    need_dh0: bool,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    block_v: int | None = None,
    chunks: Chunks | None = None,
) -> tuple[torch.Tensor, ...]:
    """Launch the backward. Returns ``dq, dk, dv, d_log_decay, dh0`` (``dh0`` float32 or None)."""
    B, T, H, D = q.shape
    V = v.shape[-1]
    BT = chunk_size
    BD, BV = _blocks(D, V, block_v)
    NV = triton.cdiv(V, BV)
    c = Chunks(B, T, BT, None) if chunks is None else chunks
    part_dtype = q.dtype if NV == 1 else torch.float32
    dq = q.new_empty(NV, B, T, H, D, dtype=part_dtype)
    dk = q.new_empty(NV, B, T, H, D, dtype=part_dtype)
    dv = torch.empty_like(v)
    dh0 = q.new_empty(c.n_seq, H, D, V, dtype=torch.float32) if need_dh0 else None
    dld = q.new_empty(NV, c.n_seq, H, dtype=torch.float32)
    _spike_attention_bwd_kernel[(NV, c.n_seq * H)](
        q, k, v, log_decay, hc, do, dht, dq, dk, dv, dh0, dld, c.cu_seqlens, c.chunk_offsets, scale, T, B * T,
        H=H, D=D, V=V, BT=BT, BD=BD, BV=BV, DOT_PRECISION=_dot_precision(q.dtype),
    )  # fmt: skip
    dq = dq[0] if NV == 1 else dq.sum(0).to(q.dtype)
    dk = dk[0] if NV == 1 else dk.sum(0).to(k.dtype)
    return dq, dk, dv, dld.sum((0, 1)).to(log_decay.dtype), dh0


# The launchers as PyTorch operators (``torch.ops.t4dm.spike_attention_fwd`` / ``_bwd``): torch.compile sees one
# opaque call with known output shapes, and the backward is registered with the forward. Outputs that a call
# does not produce (no final state, no saved states) are empty ``[0]`` tensors. A packed batch's chunk lists are
# built once by the caller, for forward and backward, and passed in as tensors (with the input check, a packed
# call reads cu_seqlens on the host twice).


@torch.library.custom_op("t4dm::spike_attention_fwd", mutates_args=())
def _spike_attention_fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    save_states: bool,
    chunk_size: int,
    block_v: int | None,
    cu_seqlens: torch.Tensor | None,
    chunk_indices: torch.Tensor | None,
    chunk_offsets: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(o, final state or [0], chunk-start states or [0])``."""
    chunks = Chunks.from_parts(q.shape[0], q.shape[1], chunk_size, cu_seqlens, chunk_indices, chunk_offsets)
    o, ht, hc = spike_attention_fwd(
        q, k, v, log_decay, scale, initial_state, output_final_state, save_states, chunk_size, block_v, chunks
    )
    return o, or_empty(ht, q), or_empty(hc, q)


@_spike_attention_fwd_op.register_fake
def _(
    q, k, v, log_decay, scale, initial_state, output_final_state, save_states, chunk_size, block_v, cu, ci, co
):
    B, T, H, D = q.shape
    V = v.shape[-1]
    n_seq, n_chunks = Chunks.sizes(B, T, chunk_size, cu, ci)
    f32 = torch.float32
    return (
        q.new_empty(B, T, H, V),
        q.new_empty((n_seq, H, D, V) if output_final_state else (0,), dtype=f32),
        q.new_empty((n_chunks, H, D, V) if save_states else (0,), dtype=f32),
    )


@torch.library.custom_op("t4dm::spike_attention_bwd", mutates_args=())
def _spike_attention_bwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float,
    hc: torch.Tensor,
    do: torch.Tensor,
    dht: torch.Tensor | None,
    need_dh0: bool,
    chunk_size: int,
    block_v: int | None,
    cu_seqlens: torch.Tensor | None,
    chunk_indices: torch.Tensor | None,
    chunk_offsets: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv, d_log_decay, dh0 float32 or [0])``."""
    chunks = Chunks.from_parts(q.shape[0], q.shape[1], chunk_size, cu_seqlens, chunk_indices, chunk_offsets)
    dq, dk, dv, dld, dh0 = spike_attention_bwd(
        q, k, v, log_decay, scale, hc, do, dht, need_dh0, chunk_size, block_v, chunks
    )
    return dq, dk, dv, dld, or_empty(dh0, q)


@_spike_attention_bwd_op.register_fake
def _(q, k, v, log_decay, scale, hc, do, dht, need_dh0, chunk_size, block_v, cu, ci, co):
    B, T, H, D = q.shape
    n_seq, _ = Chunks.sizes(B, T, chunk_size, cu, ci)
    dh0 = q.new_empty((n_seq, H, D, v.shape[-1]) if need_dh0 else (0,), dtype=torch.float32)
    return (*(torch.empty_like(x) for x in (q, k, v, log_decay)), dh0)


def _spike_attention_setup_context(ctx, inputs, output) -> None:
    q, k, v, log_decay, scale, h0, output_final_state, save_states, chunk_size, block_v, *parts = inputs
    ctx.save_for_backward(q, k, v, log_decay, output[2], *parts)
    ctx.options = (scale, output_final_state, save_states, chunk_size, block_v)
    ctx.initial_state_dtype = None if h0 is None else h0.dtype


def _spike_attention_backward(ctx, do, dht, _dhc):
    q, k, v, log_decay, hc, *parts = ctx.saved_tensors
    scale, output_final_state, save_states, chunk_size, block_v = ctx.options
    if not save_states:
        raise RuntimeError(
            "t4dm::spike_attention_fwd ran with save_states=False, so it cannot be differentiated"
        )
    do = torch.zeros_like(v) if do is None else do.contiguous()
    dht = dht.contiguous() if output_final_state and dht is not None else None
    has_h0 = ctx.initial_state_dtype is not None
    dq, dk, dv, dld, dh0 = _spike_attention_bwd_op(
        q, k, v, log_decay, scale, hc, do, dht, has_h0, chunk_size, block_v, *parts
    )
    dh0 = dh0.to(ctx.initial_state_dtype) if has_h0 else None
    return dq, dk, dv, dld, None, dh0, *([None] * 7)


_spike_attention_fwd_op.register_autograd(
    _spike_attention_backward, setup_context=_spike_attention_setup_context
)


def chunk_spike_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    *,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    block_v: int | None = None,
    check_inputs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Spike attention through the chunked Triton kernels (CUDA tensors, or any device under
    ``TRITON_INTERPRET=1``), also for packed sequences (``cu_seqlens``: chunks never cross a sequence
    boundary). Returns ``(o, final_state or None)``; ``chunk_size`` (a power of two
    >= 16) and ``block_v`` (value columns per program, a power of two >= 16; default min(64, V)) are
    tuning knobs. See :func:`t4dm.kernels.spike_attention.spike_attention`."""
    if check_inputs:
        scale = check_spike_attention_inputs(q, k, v, log_decay, scale, initial_state, cu_seqlens=cu_seqlens)
    elif scale is None:
        scale = q.shape[-1] ** -0.5
    if q.dtype == torch.float64:
        raise ValueError("the Triton path takes float16, bfloat16 or float32, got float64")
    if q.shape[-1] > MAX_TRITON_D:
        raise ValueError(f"the Triton path takes D <= {MAX_TRITON_D}, got D={q.shape[-1]}")
    for name, size in (("chunk_size", chunk_size), ("block_v", block_v)):
        if size is not None and (size < 16 or size & (size - 1)):
            raise ValueError(f"{name} must be a power of two >= 16, got {size}")
    if not q.is_cuda and not INTERPRET:
        raise ValueError(
            f"the Triton kernels need CUDA tensors (got {q.device}); on CPU set TRITON_INTERPRET=1 "
            "before importing t4dm.kernels.spike_attention.chunk, or call t4dm.kernels.spike_attention"
        )
    q, k, v, log_decay = (x.contiguous() for x in (q, k, v, log_decay))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    tensors = (q, k, v, log_decay, initial_state)
    save_states = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)
    chunks = Chunks(q.shape[0], q.shape[1], chunk_size, cu_seqlens)  # once, for both passes
    o, ht, _ = _spike_attention_fwd_op(
        q, k, v, log_decay, float(scale), initial_state, output_final_state, save_states, chunk_size, block_v,
        *chunks.parts(),
    )  # fmt: skip
    return o, (ht if output_final_state else None)
