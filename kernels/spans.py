"""Triton helpers shared by the chunked linear-attention kernels: where a program's sequence and chunk lie,
for a batch of rows ``[B, T]`` or for sequences packed into one row (``cu_seqlens``, an ``IS_VARLEN``
constexpr: the non-packed kernels compile without the lookups). Inlined into the kernels that call them."""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["chunk_span", "sequence_span"]


@triton.jit
def sequence_span(cu_seqlens, chunk_offsets, i_seq, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """``(bos, T, c0)`` of batch row or sequence ``i_seq``: its first token (int64), its length and its first
    chunk (int64) among all the chunks."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_seq).to(tl.int64)
        T = (tl.load(cu_seqlens + i_seq + 1).to(tl.int64) - bos).to(tl.int32)
        c0 = tl.load(chunk_offsets + i_seq).to(tl.int64)
    else:
        bos = i_seq.to(tl.int64) * T
        c0 = i_seq.to(tl.int64) * tl.cdiv(T, BT)
    return bos, T, c0


@triton.jit
def chunk_span(cu_seqlens, chunk_indices, T, H: tl.constexpr, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """``(i_c, i_t, i_h, bos, T)`` of this program of a chunk-parallel kernel: its chunk among all the chunks,
    the chunk within its sequence, its head, the sequence's first token and length. Grid: ``(chunks, H)``
    packed (``chunk_indices`` gives each chunk's sequence and place), else ``(NT, B * H)``."""
    if IS_VARLEN:
        i_c, i_h = tl.program_id(0), tl.program_id(1)
        i_seq = tl.load(chunk_indices + i_c * 2).to(tl.int32)
        i_t = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int32)
        bos = tl.load(cu_seqlens + i_seq).to(tl.int64)
        T = (tl.load(cu_seqlens + i_seq + 1).to(tl.int64) - bos).to(tl.int32)
    else:
        i_t, i_bh = tl.program_id(0), tl.program_id(1)
        i_b, i_h = i_bh // H, i_bh % H
        i_c = i_b * tl.cdiv(T, BT) + i_t
        bos = i_b.to(tl.int64) * T
    return i_c, i_t, i_h, bos, T
