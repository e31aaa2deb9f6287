"""Variable-length batches shared by the linear-attention kernels: ``N`` sequences packed into one batch row,
sequence ``n`` at tokens ``cu_seqlens[n]:cu_seqlens[n + 1]`` (flash-linear-attention's convention).
Plain PyTorch (no Triton import): the public interfaces check their inputs with it."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["Chunks", "check_cu_seqlens", "host_bounds", "one_read", "per_sequence"]

_scope = threading.local()


@contextlib.contextmanager
def one_read(cu_seqlens: torch.Tensor | None) -> Iterator[None]:
    """Inside, :func:`host_bounds` reads ``cu_seqlens`` from the device once: a public call's check, chunk plan
    and per-sequence slicing share one read (a host sync on CUDA) instead of one each. Nothing is kept after
    the call, so a tensor changed between calls, however it was changed, is read again."""
    previous = getattr(_scope, "entry", None)
    _scope.entry = None if cu_seqlens is None else [cu_seqlens, None]
    try:
        yield
    finally:
        _scope.entry = previous


def host_bounds(cu_seqlens: torch.Tensor) -> list[int]:
    """``cu_seqlens`` as a list of ints: read from the device, once per :func:`one_read` scope."""
    entry = getattr(_scope, "entry", None)
    if entry is not None and entry[0] is cu_seqlens:
        if entry[1] is None:
            entry[1] = [int(b) for b in cu_seqlens.tolist()]
        return entry[1]
    return [int(b) for b in cu_seqlens.tolist()]


def check_cu_seqlens(cu_seqlens: object, B: int, T: int, device: torch.device) -> int:
    """Check ``cu_seqlens`` (sequences packed into one batch row of ``T`` tokens); return the number of
    sequences."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise ValueError(
            f"cu_seqlens must be a torch.Tensor [N + 1] or None, got {type(cu_seqlens).__name__}"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"cu_seqlens must be a 1-D int32/int64 tensor [N + 1] with N >= 1, got shape "
            f"{tuple(cu_seqlens.shape)} and {cu_seqlens.dtype}"
        )
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but the inputs are on {device}")
    if B != 1:
        raise ValueError(f"with cu_seqlens the sequences are packed into one batch row: B must be 1, got {B}")
    bounds = host_bounds(cu_seqlens)
    if bounds[0] != 0 or bounds[-1] != T or any(b <= a for a, b in itertools.pairwise(bounds)):
        raise ValueError(
            f"cu_seqlens must rise strictly from 0 to T={T} (every sequence at least one token), got {bounds}"
        )
    return len(bounds) - 1


class Chunks:
    """How the tokens split into chunks of ``BT``: per batch row, or per sequence of a packed batch.

    ``n_seq`` sequences (batch rows, or ``len(cu_seqlens) - 1``), ``n_chunks`` chunks in all; with
    ``cu_seqlens``, ``chunk_indices`` ``[n_chunks, 2]`` (sequence, chunk within it) and ``chunk_offsets``
    ``[n_seq + 1]`` (each sequence's first chunk), int32 on the tokens' device, built on the host from
    ``cu_seqlens`` as the check read it (:func:`host_bounds` in a :func:`one_read` scope; the autograd functions build it once per call, for
    forward and backward).
    """

    def __init__(self, B: int, T: int, BT: int, cu_seqlens: torch.Tensor | None) -> None:
        self.cu_seqlens = cu_seqlens
        if cu_seqlens is None:
            self.n_seq, nt = B, -(-T // BT)
            self.n_chunks = B * nt
            self.chunk_indices = self.chunk_offsets = None
            self.intra_grid = (nt, B)  # x H heads
            return
        bounds = np.asarray(host_bounds(cu_seqlens), dtype=np.int64)  # read once per call (host_bounds)
        per_seq = (bounds[1:] - bounds[:-1] + BT - 1) // BT
        offsets = np.concatenate([[0], np.cumsum(per_seq)])
        self.n_seq, self.n_chunks = len(per_seq), int(offsets[-1])
        seq = np.repeat(np.arange(self.n_seq), per_seq)
        within = np.arange(self.n_chunks) - offsets[seq]
        device = cu_seqlens.device
        self.cu_seqlens = cu_seqlens.to(torch.int32)
        self.chunk_indices = torch.as_tensor(np.stack([seq, within], axis=1).astype(np.int32), device=device)
        self.chunk_offsets = torch.as_tensor(offsets.astype(np.int32), device=device)
        self.intra_grid = (self.n_chunks, 1)

    @classmethod
    def from_parts(
        cls,
        B: int,
        T: int,
        BT: int,
        cu_seqlens: torch.Tensor | None,
        chunk_indices: torch.Tensor | None,
        chunk_offsets: torch.Tensor | None,
    ) -> Chunks:
        """The chunks again from the tensors of an earlier :class:`Chunks` (``cu_seqlens`` int32,
        ``chunk_indices``, ``chunk_offsets``), without reading anything back to the host: how the kernels'
        operators, which take tensors and numbers only, rebuild what their caller built once."""
        if cu_seqlens is None or chunk_indices is None or chunk_offsets is None:
            return cls(B, T, BT, None)
        chunks = cls.__new__(cls)
        chunks.cu_seqlens, chunks.chunk_indices, chunks.chunk_offsets = (
            cu_seqlens,
            chunk_indices,
            chunk_offsets,
        )
        chunks.n_seq, chunks.n_chunks = cu_seqlens.shape[0] - 1, chunk_indices.shape[0]
        chunks.intra_grid = (chunks.n_chunks, 1)
        return chunks

    def parts(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """``(cu_seqlens, chunk_indices, chunk_offsets)``, for :meth:`from_parts`."""
        return self.cu_seqlens, self.chunk_indices, self.chunk_offsets

    @staticmethod
    def sizes(B: int, T: int, BT: int, cu_seqlens: torch.Tensor | None, chunk_indices: torch.Tensor | None):  # type: ignore[no-untyped-def]
        """``(n_seq, n_chunks)`` from shapes alone (the operators' fake implementations use it)."""
        if cu_seqlens is None or chunk_indices is None:
            return B, B * ((T + BT - 1) // BT)
        return cu_seqlens.shape[0] - 1, chunk_indices.shape[0]


def per_sequence(fn, tokens, shared, initial_state, output_final_state, cu_seqlens, **options):  # type: ignore[no-untyped-def]
    """The PyTorch path of a packed batch: ``fn(*token_slices, *shared, initial_state_n, output_final_state,
    **options)`` on each sequence (``tokens`` ``[1, T, ...]`` sliced along time, the state row ``n``);
    outputs concatenated along time, final states stacked ``[N, ...]``."""
    outputs, states = [], []
    for n, (bos, eos) in enumerate(itertools.pairwise(host_bounds(cu_seqlens))):
        h0 = None if initial_state is None else initial_state[n : n + 1]
        o, ht = fn(*(x[:, bos:eos] for x in tokens), *shared, h0, output_final_state, **options)
        outputs.append(o)
        states.append(ht)
    return torch.cat(outputs, dim=1), (torch.cat(states) if output_final_state else None)
