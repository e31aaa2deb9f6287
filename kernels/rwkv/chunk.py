"""Chunked RWKV-6 in Triton: forward, backward and their operators (``torch.ops.t4dm.rwkv6_fwd`` / ``_bwd``).

Inside a chunk of BT tokens, with gi / ge the inclusive / exclusive cumulative sums of w from the chunk
start (pre-multiplied by log2(e), so every exponential is one ``exp2``):

    A[t, s] = sum_k r_tk k_sk 2^(ge_tk - gi_sk)   (s < t)      pairwise: every exponent is <= 0
    A[t, t] = sum_k r_tk u_k k_tk                               the bonus
    o       = scale * (A @ v + (r * 2^ge) @ h)
    h      <- 2^gi_last * h + (k * 2^(gi_last - gi))^T @ v

Five kernels:

- ``_rwkv6_fwd_intra_kernel``, one program per (chunk, batch row, head): ``A``, built one key column at a
  time (``BT`` columns of ``[BT, K]``), as flash-linear-attention does for its diagonal sub-chunks; no
  factorisation through ``exp(-cumsum)``, which overflows for strong decays. Saved for the backward.
- ``_rwkv6_fwd_kernel``, one program per (value block, batch row, head): walks the chunks in order with
  its ``[K, BV]`` slice of the state in registers (no state round-trip through memory); with autograd it
  also stores the state at every chunk start (``[B, H, NT, K, V]`` float32).
- ``_rwkv6_bwd_intra_kernel``, per chunk: ``dA = scale * do v^T`` and, in the same per-column loop, the
  intra-chunk parts of dr and dk, plus the bonus terms.
- ``_rwkv6_bwd_kernel``, per value block, the chunks in reverse with ``dh`` in registers: dv whole, the
  inter-chunk parts of dr and dk, dh0.
- ``_rwkv6_bwd_dw_kernel``: sums the parts and turns them into dw with a reverse cumulative sum,

      dw_j = sum_{t >= j} (r_t dr_t - k_t dk_t) - r_j dr_j + dd_j r_j u k_j + sum_v dh_T h_T

  (full dr, dk; ``dd_j = scale v_j . do_j``; flash-linear-attention's identity), and du.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..checks import or_empty
from ..spans import chunk_span, sequence_span
from ..varlen import Chunks
from .interface import MAX_TRITON_K, check_rwkv6_inputs

__all__ = ["chunk_rwkv6", "rwkv6_bwd", "rwkv6_fwd"]

try:
    INTERPRET = bool(triton.knobs.runtime.interpret)
except AttributeError:  # triton < 3.4
    INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
AUTOTUNE = os.environ.get("T4DM_AUTOTUNE", "1") != "0"

LOG2E = tl.constexpr(1.4426950408889634)  # a constexpr: compiled kernels read no other globals
# Chunk length of the forward/backward kernels: the pairwise decay factor costs BT^2 * K exponentials
# per chunk, the state products 2 * BT * K * V multiply-adds.
DEFAULT_CHUNK_SIZE = 32


def _configs() -> list[triton.Config]:
    # the interpreter runs every config, and T4DM_AUTOTUNE=0 skips tuning (tests): one config
    if INTERPRET or not AUTOTUNE:
        return [triton.Config({}, num_warps=4, num_stages=2)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (1, 2)]


@triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})
@triton.autotune(configs=_configs(), key=["K", "BT", "BK"])
@triton.jit(do_not_specialize=["T"])
def _rwkv6_fwd_intra_kernel(
    r,  # receptance [B, T, H, K]
    k,  # key [B, T, H, K]
    w,  # log decay [B, T, H, K], <= 0
    u,  # bonus [H, K]
    A,  # intra-chunk scores [chunks, H, BT, BT] (input dtype)
    cu_seqlens,  # sequence starts and end [N + 1] in the packed tokens, or None
    chunk_indices,  # (sequence, chunk) of each chunk [chunks, 2], or None
    T,  # sequence length (unused with cu_seqlens)
    H: tl.constexpr,  # heads
    K: tl.constexpr,  # key width
    BT: tl.constexpr,  # chunk length
    BK: tl.constexpr,  # key block (>= K: one block)
    IS_VARLEN: tl.constexpr,
):
    i_c, i_t, i_h, bos, T = chunk_span(cu_seqlens, chunk_indices, T, H, BT, IS_VARLEN)
    o_i = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    o_t = i_t * BT + o_i
    m_tk = (o_t < T)[:, None] & m_k[None, :]
    p_rk = ((bos + o_t) * H + i_h)[:, None] * K + o_k[None, :]
    b_r = tl.load(r + p_rk, mask=m_tk, other=0.0).to(tl.float32)
    b_k = tl.load(k + p_rk, mask=m_tk, other=0.0).to(tl.float32)
    # padded rows get w = 0: the cumulative decay stays flat past the end of the sequence
    b_w = tl.load(w + p_rk, mask=m_tk, other=0.0).to(tl.float32) * LOG2E
    b_ge = tl.cumsum(b_w, axis=0) - b_w  # exclusive: the decay from the chunk start to each query
    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0.0).to(tl.float32)

    # one key column s at a time; b_gs is the inclusive cumulative decay at s
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    b_gs = tl.zeros([BK], dtype=tl.float32)
    for s in range(0, BT):
        o_s = (bos + i_t * BT + s) * H * K + i_h * K + o_k
        m_s = m_k & (i_t * BT + s < T)
        b_ks = tl.load(k + o_s, mask=m_s, other=0.0).to(tl.float32)
        b_gs += tl.load(w + o_s, mask=m_s, other=0.0).to(tl.float32) * LOG2E
        b_e = tl.exp2(tl.where(o_i[:, None] > s, b_ge - b_gs[None, :], float("-inf")))
        b_A += tl.where(o_i[None, :] == s, tl.sum(b_r * b_ks[None, :] * b_e, axis=1)[:, None], 0.0)
    b_A += tl.where(o_i[:, None] == o_i[None, :], tl.sum(b_r * b_u[None, :] * b_k, axis=1)[:, None], 0.0)
    p_A = A + (i_c.to(tl.int64) * H + i_h) * BT * BT + o_i[:, None] * BT + o_i[None, :]
    tl.store(p_A, b_A.to(A.dtype.element_ty))


@triton.heuristics(
    {
        "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
        "STORE_FINAL_STATE": lambda args: args["ht"] is not None,
        "STORE_CHUNK_STATES": lambda args: args["hc"] is not None,
        "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
    }
)
@triton.autotune(configs=_configs(), key=["K", "V", "BT", "BK", "BV", "DOT_PRECISION"])
@triton.jit(do_not_specialize=["T"])
def _rwkv6_fwd_kernel(
    r,  # receptance [B, T, H, K]
    k,  # key [B, T, H, K]
    v,  # value [B, T, H, V]
    w,  # log decay [B, T, H, K], <= 0
    A,  # intra-chunk scores [chunks, H, BT, BT], from _rwkv6_fwd_intra_kernel
    o,  # output [B, T, H, V]
    h0,  # initial state [N, H, K, V], or None
    ht,  # final state [N, H, K, V] float32, or None
    hc,  # state at each chunk start [chunks, H, K, V] float32 (saved for the backward), or None
    cu_seqlens,  # sequence starts and end [N + 1] in the packed tokens, or None
    chunk_offsets,  # first chunk of each sequence [N + 1], or None
    scale,  # output scale
    T,  # sequence length (unused with cu_seqlens)
    H: tl.constexpr,  # heads
    K: tl.constexpr,  # key width
    V: tl.constexpr,  # value width
    BT: tl.constexpr,  # chunk length
    BK: tl.constexpr,  # key block (>= K: one block)
    BV: tl.constexpr,  # value block of this program
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 inputs (exact products), else "tf32" (unused for 16-bit)
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
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_state = o_k[:, None] * V + o_v[None, :]
    o_A = o_i[:, None] * BT + o_i[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_bh.to(tl.int64) * K * V + o_state, mask=m_kv, other=0.0).to(tl.float32)

    for i_t in range(0, NT):
        if STORE_CHUNK_STATES:
            p_hc = hc + ((c0 + i_t) * H + i_h) * K * V + o_state
            tl.store(p_hc, b_h, mask=m_kv)
        o_t = i_t * BT + o_i
        m_t = o_t < T
        o_row = (bos + o_t) * H + i_h
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        p_rk = o_row[:, None] * K + o_k[None, :]
        p_vo = o_row[:, None] * V + o_v[None, :]
        b_r = tl.load(r + p_rk, mask=m_tk, other=0.0).to(tl.float32)
        b_k = tl.load(k + p_rk, mask=m_tk, other=0.0).to(tl.float32)
        b_w = tl.load(w + p_rk, mask=m_tk, other=0.0).to(tl.float32) * LOG2E
        b_v = tl.load(v + p_vo, mask=m_tv, other=0.0).to(DT)
        b_A = tl.load(A + ((c0 + i_t) * H + i_h) * BT * BT + o_A)
        b_gi = tl.cumsum(b_w, axis=0)
        b_gl = tl.sum(b_w, axis=0)

        b_o = tl.dot(b_A.to(DT), b_v, input_precision=DOT_PRECISION)
        b_o += tl.dot((b_r * tl.exp2(b_gi - b_w)).to(DT), b_h.to(DT), input_precision=DOT_PRECISION)
        tl.store(o + p_vo, (b_o * scale).to(o.dtype.element_ty), mask=m_tv)

        b_kd = (b_k * tl.exp2(b_gl[None, :] - b_gi)).to(DT)
        b_h = b_h * tl.exp2(b_gl)[:, None]
        b_h += tl.dot(tl.trans(b_kd), b_v, input_precision=DOT_PRECISION)

    if STORE_FINAL_STATE:
        tl.store(ht + i_bh.to(tl.int64) * K * V + o_state, b_h, mask=m_kv)


@triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})
@triton.autotune(configs=_configs(), key=["K", "V", "BT", "BK", "BV", "DOT_PRECISION"])
@triton.jit(do_not_specialize=["T"])
def _rwkv6_bwd_intra_kernel(
    r,  # receptance [B, T, H, K]
    k,  # key [B, T, H, K]
    v,  # value [B, T, H, V]
    w,  # log decay [B, T, H, K]
    u,  # bonus [H, K]
    do,  # output gradient [B, T, H, V]
    dr,  # intra-chunk and bonus part of dr [B, T, H, K] float32
    dk,  # intra-chunk and bonus part of dk [B, T, H, K] float32
    dd,  # scale * (v_t . do_t) [B, T, H] float32
    cu_seqlens,  # sequence starts and end [N + 1] in the packed tokens, or None
    chunk_indices,  # (sequence, chunk) of each chunk [chunks, 2], or None
    scale,  # output scale
    T,  # sequence length (unused with cu_seqlens)
    H: tl.constexpr,  # heads
    K: tl.constexpr,  # key width
    V: tl.constexpr,  # value width
    BT: tl.constexpr,  # chunk length
    BK: tl.constexpr,  # key block (>= K)
    BV: tl.constexpr,  # value block of the dA loop
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 inputs, else "tf32" (unused for 16-bit)
    IS_VARLEN: tl.constexpr,
):
    _, i_t, i_h, bos, T = chunk_span(cu_seqlens, chunk_indices, T, H, BT, IS_VARLEN)
    DT = do.dtype.element_ty
    o_i = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    o_t = i_t * BT + o_i
    m_t = o_t < T
    o_row = (bos + o_t) * H + i_h
    m_tk = m_t[:, None] & m_k[None, :]
    p_rk = o_row[:, None] * K + o_k[None, :]
    b_r = tl.load(r + p_rk, mask=m_tk, other=0.0).to(tl.float32)
    b_k = tl.load(k + p_rk, mask=m_tk, other=0.0).to(tl.float32)
    b_w = tl.load(w + p_rk, mask=m_tk, other=0.0).to(tl.float32) * LOG2E
    b_ge = tl.cumsum(b_w, axis=0) - b_w
    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0.0).to(tl.float32)

    # dA[t, s] = scale * do_t . v_s over the whole value width; dd_t is its diagonal
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    b_dd = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        p_vo = o_row[:, None] * V + o_v[None, :]
        b_v = tl.load(v + p_vo, mask=m_tv, other=0.0).to(DT)
        b_do = tl.load(do + p_vo, mask=m_tv, other=0.0).to(DT)
        b_dA += tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PRECISION)
        b_dd += tl.sum(b_v.to(tl.float32) * b_do.to(tl.float32), axis=1)
    b_dA = tl.where(o_i[:, None] > o_i[None, :], b_dA * scale, 0.0)
    b_dd *= scale

    b_dr = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_gs = tl.zeros([BK], dtype=tl.float32)
    for s in range(0, BT):
        o_s = (bos + i_t * BT + s) * H * K + i_h * K + o_k
        m_s = m_k & (i_t * BT + s < T)
        b_ks = tl.load(k + o_s, mask=m_s, other=0.0).to(tl.float32)
        b_gs += tl.load(w + o_s, mask=m_s, other=0.0).to(tl.float32) * LOG2E
        b_e = tl.exp2(tl.where(o_i[:, None] > s, b_ge - b_gs[None, :], float("-inf")))
        b_dAs = tl.sum(tl.where(o_i[None, :] == s, b_dA, 0.0), axis=1)  # column s of dA
        b_dr += b_dAs[:, None] * b_ks[None, :] * b_e
        b_dks = tl.sum(b_dAs[:, None] * b_r * b_e, axis=0)
        b_dk += tl.where(o_i[:, None] == s, b_dks[None, :], 0.0)
    # the bonus: o_t += scale (r_t . u k_t) v_t
    b_dr += b_dd[:, None] * b_u[None, :] * b_k
    b_dk += b_dd[:, None] * b_u[None, :] * b_r
    tl.store(dr + p_rk, b_dr, mask=m_tk)
    tl.store(dk + p_rk, b_dk, mask=m_tk)
    tl.store(dd + o_row, b_dd, mask=m_t)


@triton.heuristics(
    {
        "USE_FINAL_STATE_GRADIENT": lambda args: args["dht"] is not None,
        "STORE_INITIAL_STATE_GRADIENT": lambda args: args["dh0"] is not None,
        "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
    }
)
@triton.autotune(configs=_configs(), key=["K", "V", "BT", "BK", "BV", "DOT_PRECISION"])
@triton.jit(do_not_specialize=["T", "total"])
def _rwkv6_bwd_kernel(
    r,  # receptance [B, T, H, K]
    k,  # key [B, T, H, K]
    v,  # value [B, T, H, V]
    w,  # log decay [B, T, H, K]
    A,  # intra-chunk scores [chunks, H, BT, BT], from the forward
    hc,  # state at each chunk start [chunks, H, K, V] float32, from the forward
    do,  # output gradient [B, T, H, V]
    dht,  # final-state gradient [N, H, K, V], or None
    dr,  # inter-chunk dr of this value block [NV, B, T, H, K] float32
    dk,  # inter-chunk dk of this value block [NV, B, T, H, K] float32
    dv,  # value gradient [B, T, H, V]
    dh0,  # initial-state gradient [N, H, K, V] float32, or None
    cu_seqlens,  # sequence starts and end [N + 1] in the packed tokens, or None
    chunk_offsets,  # first chunk of each sequence [N + 1], or None
    scale,  # output scale
    T,  # sequence length (unused with cu_seqlens)
    total,  # B * T: tokens in the batch
    H: tl.constexpr,  # heads
    K: tl.constexpr,  # key width
    V: tl.constexpr,  # value width
    BT: tl.constexpr,  # chunk length
    BK: tl.constexpr,  # key block (>= K)
    BV: tl.constexpr,  # value block of this program
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 inputs, else "tf32" (unused for 16-bit)
    USE_FINAL_STATE_GRADIENT: tl.constexpr,
    STORE_INITIAL_STATE_GRADIENT: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_seq, i_h = i_bh // H, i_bh % H
    bos, T, c0 = sequence_span(cu_seqlens, chunk_offsets, i_seq, T, BT, IS_VARLEN)
    NT = tl.cdiv(T, BT)
    DT = dv.dtype.element_ty  # matrix products take the input dtype, accumulate in float32

    o_i = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_state = o_k[:, None] * V + o_v[None, :]
    o_A = o_i[:, None] * BT + o_i[None, :]

    b_dh = tl.zeros([BK, BV], dtype=tl.float32)  # dL/dS at the end of the current chunk
    if USE_FINAL_STATE_GRADIENT:
        b_dh += tl.load(dht + i_bh.to(tl.int64) * K * V + o_state, mask=m_kv, other=0.0).to(tl.float32)

    for i_n in range(0, NT):
        i_t = NT - 1 - i_n
        o_t = i_t * BT + o_i
        m_t = o_t < T
        o_row = (bos + o_t) * H + i_h
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        p_rk = o_row[:, None] * K + o_k[None, :]
        p_vo = o_row[:, None] * V + o_v[None, :]
        b_r = tl.load(r + p_rk, mask=m_tk, other=0.0).to(tl.float32)
        b_k = tl.load(k + p_rk, mask=m_tk, other=0.0).to(tl.float32)
        b_w = tl.load(w + p_rk, mask=m_tk, other=0.0).to(tl.float32) * LOG2E
        b_v = tl.load(v + p_vo, mask=m_tv, other=0.0).to(DT)
        b_do = tl.load(do + p_vo, mask=m_tv, other=0.0).to(DT)
        b_A = tl.load(A + ((c0 + i_t) * H + i_h) * BT * BT + o_A)
        b_h = tl.load(hc + ((c0 + i_t) * H + i_h) * K * V + o_state, mask=m_kv, other=0.0)
        b_gi = tl.cumsum(b_w, axis=0)
        b_gl = tl.sum(b_w, axis=0)
        b_decay_k = tl.exp2(b_gl[None, :] - b_gi)  # [BT, BK]: from each key to the chunk end
        b_decay_q = tl.exp2(b_gi - b_w)  # [BT, BK]: from the chunk start to each query

        b_dv = tl.dot(tl.trans(b_A).to(DT), b_do, input_precision=DOT_PRECISION) * scale
        b_dv += tl.dot((b_k * b_decay_k).to(DT), b_dh.to(DT), input_precision=DOT_PRECISION)
        b_dr = tl.dot(b_do, tl.trans(b_h).to(DT), input_precision=DOT_PRECISION) * b_decay_q * scale
        b_dk = tl.dot(b_v, tl.trans(b_dh).to(DT), input_precision=DOT_PRECISION) * b_decay_k

        o_part = i_v.to(tl.int64) * total * H * K
        tl.store(dr + o_part + p_rk, b_dr, mask=m_tk)
        tl.store(dk + o_part + p_rk, b_dk, mask=m_tk)
        tl.store(dv + p_vo, b_dv.to(dv.dtype.element_ty), mask=m_tv)

        b_dh = b_dh * tl.exp2(b_gl)[:, None]
        b_dh += tl.dot(tl.trans(b_r * b_decay_q).to(DT), b_do, input_precision=DOT_PRECISION) * scale

    if STORE_INITIAL_STATE_GRADIENT:
        tl.store(dh0 + i_bh.to(tl.int64) * K * V + o_state, b_dh, mask=m_kv)


@triton.heuristics(
    {
        "USE_FINAL_STATE_GRADIENT": lambda args: args["c"] is not None,
        "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
    }
)
@triton.autotune(configs=_configs(), key=["K", "BT", "BK", "NV"])
@triton.jit(do_not_specialize=["T", "total"])
def _rwkv6_bwd_dw_kernel(
    r,  # receptance [B, T, H, K]
    k,  # key [B, T, H, K]
    u,  # bonus [H, K]
    dr_intra,  # intra-chunk and bonus part of dr [B, T, H, K] float32
    dk_intra,  # intra-chunk and bonus part of dk [B, T, H, K] float32
    dd,  # scale * (v_t . do_t) [B, T, H] float32
    dr_inter,  # inter-chunk dr per value block [NV, B, T, H, K] float32
    dk_inter,  # inter-chunk dk per value block [NV, B, T, H, K] float32
    c,  # sum_v dh_T * h_T [B, H, K] float32, or None
    dr,  # receptance gradient [B, T, H, K]
    dk,  # key gradient [B, T, H, K]
    dw,  # log-decay gradient [B, T, H, K]
    du_part,  # bonus gradient of this sequence [N, H, K] float32
    cu_seqlens,  # sequence starts and end [N + 1] in the packed tokens, or None
    chunk_offsets,  # first chunk of each sequence [N + 1], or None
    T,  # sequence length (unused with cu_seqlens)
    total,  # B * T: tokens in the batch
    NV: tl.constexpr,  # value blocks to sum
    H: tl.constexpr,  # heads
    K: tl.constexpr,  # key width
    BT: tl.constexpr,  # rows per step
    BK: tl.constexpr,  # key block of this program
    USE_FINAL_STATE_GRADIENT: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_k, i_bh = tl.program_id(0), tl.program_id(1)
    i_seq, i_h = i_bh // H, i_bh % H
    bos, T, _ = sequence_span(cu_seqlens, chunk_offsets, i_seq, T, BT, IS_VARLEN)
    NT = tl.cdiv(T, BT)
    o_i = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K

    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    b_c = tl.zeros([BK], dtype=tl.float32)
    if USE_FINAL_STATE_GRADIENT:
        b_c += tl.load(c + i_bh.to(tl.int64) * K + o_k, mask=m_k, other=0.0)
    b_suffix = tl.zeros([BK], dtype=tl.float32)  # sum of r*dr - k*dk over the later chunks
    b_du = tl.zeros([BK], dtype=tl.float32)

    for i_n in range(0, NT):
        i_t = NT - 1 - i_n
        o_t = i_t * BT + o_i
        m_t = o_t < T
        o_row = (bos + o_t) * H + i_h
        m_tk = m_t[:, None] & m_k[None, :]
        p_rk = o_row[:, None] * K + o_k[None, :]
        b_r = tl.load(r + p_rk, mask=m_tk, other=0.0).to(tl.float32)
        b_k = tl.load(k + p_rk, mask=m_tk, other=0.0).to(tl.float32)
        b_dd = tl.load(dd + o_row, mask=m_t, other=0.0)
        b_dr = tl.load(dr_intra + p_rk, mask=m_tk, other=0.0)
        b_dk = tl.load(dk_intra + p_rk, mask=m_tk, other=0.0)
        for i_v in range(0, NV):
            o_part = i_v * total * H * K
            b_dr += tl.load(dr_inter + o_part + p_rk, mask=m_tk, other=0.0)
            b_dk += tl.load(dk_inter + o_part + p_rk, mask=m_tk, other=0.0)
        # dw_j = sum_{t >= j} (r dr - k dk)_t - r_j dr_j + (bonus of j) + c, from the full dr and dk
        b_rdr = b_r * b_dr
        b_ab = b_rdr - b_k * b_dk
        b_bonus = b_dd[:, None] * b_r * b_k
        b_dw = tl.cumsum(b_ab, axis=0, reverse=True) + b_suffix[None, :] - b_rdr + b_bonus * b_u[None, :]
        b_suffix += tl.sum(b_ab, axis=0)
        tl.store(dr + p_rk, b_dr.to(dr.dtype.element_ty), mask=m_tk)
        tl.store(dk + p_rk, b_dk.to(dk.dtype.element_ty), mask=m_tk)
        tl.store(dw + p_rk, (b_dw + b_c[None, :]).to(dw.dtype.element_ty), mask=m_tk)
        b_du += tl.sum(b_bonus, axis=0)

    tl.store(du_part + i_bh.to(tl.int64) * K + o_k, b_du, mask=m_k)


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _blocks(K: int, V: int, block_v: int | None) -> tuple[int, int]:
    BK = max(16, triton.next_power_of_2(K))
    BV = block_v if block_v is not None else max(16, min(64, triton.next_power_of_2(V)))
    return BK, BV


def rwkv6_fwd(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    save_states: bool,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    block_v: int | None = None,
    chunks: Chunks | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Launch the forward. Returns ``o``, the final state (or None), the intra-chunk scores ``A`` and
    the chunk-start states (or None); ``A`` and the states are what the backward needs."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    BT = chunk_size
    BK, BV = _blocks(K, V, block_v)
    NV = triton.cdiv(V, BV)
    c = Chunks(B, T, BT, None) if chunks is None else chunks
    A = r.new_empty(c.n_chunks, H, BT, BT)
    _rwkv6_fwd_intra_kernel[(c.intra_grid[0], c.intra_grid[1] * H)](
        r, k, w, u, A, c.cu_seqlens, c.chunk_indices, T, H=H, K=K, BT=BT, BK=BK
    )
    o = torch.empty(B, T, H, V, dtype=r.dtype, device=r.device)
    ht = r.new_empty(c.n_seq, H, K, V, dtype=torch.float32) if output_final_state else None
    hc = r.new_empty(c.n_chunks, H, K, V, dtype=torch.float32) if save_states else None
    _rwkv6_fwd_kernel[(NV, c.n_seq * H)](
        r, k, v, w, A, o, initial_state, ht, hc, c.cu_seqlens, c.chunk_offsets, scale, T,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, DOT_PRECISION=_dot_precision(r.dtype),
    )  # fmt: skip
    return o, ht, A, hc


def rwkv6_bwd(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float,
    A: torch.Tensor,
    hc: torch.Tensor,
    ht: torch.Tensor | None,
    do: torch.Tensor,
    dht: torch.Tensor | None,
    need_dh0: bool,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    block_v: int | None = None,
    chunks: Chunks | None = None,
) -> tuple[torch.Tensor, ...]:
    """Launch the backward. Returns ``dr, dk, dv, dw, du, dh0`` (``dh0`` float32 or None)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    BT = chunk_size
    BK, BV = _blocks(K, V, block_v)
    NV = triton.cdiv(V, BV)
    chunks = Chunks(B, T, BT, None) if chunks is None else chunks
    cu, offsets = chunks.cu_seqlens, chunks.chunk_offsets
    precision = _dot_precision(r.dtype)
    dr_intra = r.new_empty(B, T, H, K, dtype=torch.float32)
    dk_intra = r.new_empty(B, T, H, K, dtype=torch.float32)
    dd = r.new_empty(B, T, H, dtype=torch.float32)
    _rwkv6_bwd_intra_kernel[(chunks.intra_grid[0], chunks.intra_grid[1] * H)](
        r, k, v, w, u, do, dr_intra, dk_intra, dd, cu, chunks.chunk_indices, scale, T,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, DOT_PRECISION=precision,
    )  # fmt: skip
    dr_inter = r.new_empty(NV, B, T, H, K, dtype=torch.float32)
    dk_inter = r.new_empty(NV, B, T, H, K, dtype=torch.float32)
    dv = torch.empty_like(v)
    dh0 = r.new_empty(chunks.n_seq, H, K, V, dtype=torch.float32) if need_dh0 else None
    _rwkv6_bwd_kernel[(NV, chunks.n_seq * H)](
        r, k, v, w, A, hc, do, dht, dr_inter, dk_inter, dv, dh0, cu, offsets, scale, T, B * T,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, DOT_PRECISION=precision,
    )  # fmt: skip
    c = (dht.float() * ht).sum(-1) if dht is not None and ht is not None else None
    dr, dk, dw = torch.empty_like(r), torch.empty_like(k), torch.empty_like(w)
    du_part = r.new_empty(chunks.n_seq, H, K, dtype=torch.float32)
    BK_DW = min(BK, 64)
    _rwkv6_bwd_dw_kernel[(triton.cdiv(K, BK_DW), chunks.n_seq * H)](
        r, k, u, dr_intra, dk_intra, dd, dr_inter, dk_inter, c, dr, dk, dw, du_part, cu, offsets, T, B * T,
        NV=NV, H=H, K=K, BT=BT, BK=BK_DW,
    )  # fmt: skip
    du = du_part.sum(0).to(u.dtype)
    return dr, dk, dv, dw, du, dh0


# The launchers as PyTorch operators (``torch.ops.t4dm.rwkv6_fwd`` / ``rwkv6_bwd``): torch.compile sees one opaque
# call with known output shapes, and the backward is registered with the forward. Outputs that a call does not
# produce (no final state, no saved states) are empty ``[0]`` tensors. A packed batch's chunk lists are built once
# by the caller, for forward and backward, and passed in as tensors (with the input check, a packed call reads
# cu_seqlens on the host twice).


@torch.library.custom_op("t4dm::rwkv6_fwd", mutates_args=())
def _rwkv6_fwd_op(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    save_states: bool,
    chunk_size: int,
    block_v: int | None,
    cu_seqlens: torch.Tensor | None,
    chunk_indices: torch.Tensor | None,
    chunk_offsets: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(o, final state or [0], A, chunk-start states or [0])``."""
    chunks = Chunks.from_parts(r.shape[0], r.shape[1], chunk_size, cu_seqlens, chunk_indices, chunk_offsets)
    o, ht, A, hc = rwkv6_fwd(
        r, k, v, w, u, scale, initial_state, output_final_state, save_states, chunk_size, block_v, chunks
    )
    return o, or_empty(ht, r), A, or_empty(hc, r)


@_rwkv6_fwd_op.register_fake
def _(r, k, v, w, u, scale, initial_state, output_final_state, save_states, chunk_size, block_v, cu, ci, co):
    B, T, H, K = r.shape
    V = v.shape[-1]
    n_seq, n_chunks = Chunks.sizes(B, T, chunk_size, cu, ci)
    f32 = torch.float32
    return (
        r.new_empty(B, T, H, V),
        r.new_empty((n_seq, H, K, V) if output_final_state else (0,), dtype=f32),
        r.new_empty(n_chunks, H, chunk_size, chunk_size),
        r.new_empty((n_chunks, H, K, V) if save_states else (0,), dtype=f32),
    )


@torch.library.custom_op("t4dm::rwkv6_bwd", mutates_args=())
def _rwkv6_bwd_op(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float,
    A: torch.Tensor,
    hc: torch.Tensor,
    ht: torch.Tensor | None,
    do: torch.Tensor,
    dht: torch.Tensor | None,
    need_dh0: bool,
    chunk_size: int,
    block_v: int | None,
    cu_seqlens: torch.Tensor | None,
    chunk_indices: torch.Tensor | None,
    chunk_offsets: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dr, dk, dv, dw, du, dh0 float32 or [0])``."""
    chunks = Chunks.from_parts(r.shape[0], r.shape[1], chunk_size, cu_seqlens, chunk_indices, chunk_offsets)
    dr, dk, dv, dw, du, dh0 = rwkv6_bwd(
        r, k, v, w, u, scale, A, hc, ht, do, dht, need_dh0, chunk_size, block_v, chunks
    )
    return dr, dk, dv, dw, du, or_empty(dh0, r)


@_rwkv6_bwd_op.register_fake
def _(r, k, v, w, u, scale, A, hc, ht, do, dht, need_dh0, chunk_size, block_v, cu, ci, co):
    B, T, H, K = r.shape
    n_seq, _ = Chunks.sizes(B, T, chunk_size, cu, ci)
    dh0 = r.new_empty((n_seq, H, K, v.shape[-1]) if need_dh0 else (0,), dtype=torch.float32)
    return (*(torch.empty_like(x) for x in (r, k, v, w, u)), dh0)


def _rwkv6_setup_context(ctx, inputs, output) -> None:
    r, k, v, w, u, scale, h0, output_final_state, save_states, chunk_size, block_v, *parts = inputs
    _, ht, A, hc = output
    ctx.save_for_backward(r, k, v, w, u, A, hc, ht if output_final_state else None, *parts)
    ctx.options = (scale, output_final_state, save_states, chunk_size, block_v)
    ctx.initial_state_dtype = None if h0 is None else h0.dtype


def _rwkv6_backward(ctx, do, dht, _dA, _dhc):
    r, k, v, w, u, A, hc, ht, *parts = ctx.saved_tensors
    scale, output_final_state, save_states, chunk_size, block_v = ctx.options
    if not save_states:
        raise RuntimeError("t4dm::rwkv6_fwd ran with save_states=False, so it cannot be differentiated")
    do = torch.zeros_like(v) if do is None else do.contiguous()
    dht = dht.contiguous() if output_final_state and dht is not None else None
    has_h0 = ctx.initial_state_dtype is not None
    dr, dk, dv, dw, du, dh0 = _rwkv6_bwd_op(
        r, k, v, w, u, scale, A, hc, ht, do, dht, has_h0, chunk_size, block_v, *parts
    )
    dh0 = dh0.to(ctx.initial_state_dtype) if has_h0 else None
    return dr, dk, dv, dw, du, None, dh0, *([None] * 7)


_rwkv6_fwd_op.register_autograd(_rwkv6_backward, setup_context=_rwkv6_setup_context)


def chunk_rwkv6(
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
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    block_v: int | None = None,
    check_inputs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``rwkv6`` through the chunked Triton kernels (CUDA tensors, or any device under
    ``TRITON_INTERPRET=1``). Same arguments and results as :func:`t4dm.kernels.rwkv.rwkv6`, including
    ``cu_seqlens`` (sequences packed into one batch row; chunks never cross a sequence boundary);
    ``chunk_size`` (a power of two >= 16) and ``block_v`` (value columns per program, a power of two
    >= 16; default min(64, V)) are tuning knobs."""
    if check_inputs:
        scale = check_rwkv6_inputs(r, k, v, w, u, scale, initial_state, cu_seqlens=cu_seqlens)
    elif scale is None:
        scale = r.shape[-1] ** -0.5
    if r.dtype == torch.float64:
        raise ValueError("the Triton path takes float16, bfloat16 or float32, got float64")
    if r.shape[-1] > MAX_TRITON_K:
        raise ValueError(f"the Triton path takes K <= {MAX_TRITON_K}, got K={r.shape[-1]}")
    for name, size in (("chunk_size", chunk_size), ("block_v", block_v)):
        if size is not None and (size < 16 or size & (size - 1)):
            raise ValueError(f"{name} must be a power of two >= 16, got {size}")
    if not r.is_cuda and not INTERPRET:
        raise ValueError(
            f"the Triton kernels need CUDA tensors (got {r.device}); on CPU set TRITON_INTERPRET=1 "
            "before importing t4dm.kernels.rwkv.chunk, or call t4dm.kernels.rwkv6"
        )
    r, k, v, w, u = (x.contiguous() for x in (r, k, v, w, u))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    tensors = (r, k, v, w, u, initial_state)
    save_states = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)
    chunks = Chunks(r.shape[0], r.shape[1], chunk_size, cu_seqlens)  # once, for both passes
    o, ht, _, _ = _rwkv6_fwd_op(
        r, k, v, w, u, float(scale), initial_state, output_final_state, save_states, chunk_size, block_v,
        *chunks.parts(),
    )  # fmt: skip
    return o, (ht if output_final_state else None)
