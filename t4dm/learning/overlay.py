"""Plasticity updates as overlay edge writes (T4DX ``UPDATE_EDGE_WEIGHT``).

T4DX's ``UPDATE_EDGE_WEIGHT`` records an O(1) weight delta in the memtable, folded in at compaction. The
rules here write through the small :class:`EdgeWeightSink` protocol, so any store (or a test fake) that
has ``update_edge_weight(src, dst, rel, *, delta)`` can take them; T4DX itself is one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import torch

from t4dm.errors import InvalidInput
from t4dm.spiking.config import check_number

__all__ = ["EdgeUpdate", "EdgeWeightSink", "edge_updates", "write_edge_updates"]


@runtime_checkable
class EdgeWeightSink(Protocol):
    """Takes bounded edge-weight deltas: ``src`` → ``dst`` under relation ``rel``, ``delta`` added
    (:meth:`t4dm.storage.T4DX.update_edge_weight` is one). A sink that also has
    ``update_edge_weights(updates)`` (T4DX does) takes all of a call's updates in one transaction."""

    def update_edge_weight(self, src: str, dst: str, rel: str, *, delta: float) -> object: ...


class EdgeUpdate(NamedTuple):
    src: str
    dst: str
    rel: str
    delta: float


def edge_updates(
    delta: torch.Tensor,
    pre_ids: Sequence[str],
    post_ids: Sequence[str],
    *,
    rel: str,
    max_delta: float,
    min_abs: float = 1e-6,
    self_edges: bool = False,
) -> list[EdgeUpdate]:
    """The edge updates of a weight change ``delta`` ``[N_post, N_pre]``: one per synapse with
    ``|Δ| >= min_abs``, from ``pre_ids[j]`` to ``post_ids[i]``, clipped to ``±max_delta``, in row-major order.

    ``self_edges=False`` drops pairs whose two ids are equal (a population plastic onto itself, e.g. memory
    items co-activated in replay). Raises :class:`InvalidInput` (and returns nothing) for mismatched ids,
    an empty ``rel``, or a non-finite delta.
    """
    if not isinstance(delta, torch.Tensor) or delta.dim() != 2:
        raise InvalidInput("delta", type(delta).__name__, "must be a 2-D tensor [N_post, N_pre]")
    n_post, n_pre = delta.shape
    if len(pre_ids) != n_pre:
        raise InvalidInput("pre_ids", len(pre_ids), f"must name the {n_pre} presynaptic units (columns)")
    if len(post_ids) != n_post:
        raise InvalidInput("post_ids", len(post_ids), f"must name the {n_post} postsynaptic units (rows)")
    if not isinstance(rel, str) or not rel:
        raise InvalidInput("rel", rel, "must be a non-empty string")
    max_delta = check_number("max_delta", max_delta, low=0.0, low_open=True)
    min_abs = check_number("min_abs", min_abs, low=0.0)
    values = delta.detach().double().cpu()
    if not bool(torch.isfinite(values).all()):
        raise InvalidInput("delta", "non-finite", "contains NaN or inf; nothing written")
    rows, cols = (
        torch.nonzero(values.abs() >= min_abs, as_tuple=True)
        if min_abs > 0
        else torch.nonzero(torch.ones_like(values, dtype=torch.bool), as_tuple=True)
    )
    updates = []
    for i, j, d in zip(rows.tolist(), cols.tolist(), values[rows, cols].tolist(), strict=True):
        src, dst = str(pre_ids[j]), str(post_ids[i])
        if src == dst and not self_edges:
            continue
        updates.append(EdgeUpdate(src, dst, rel, math.copysign(min(abs(d), max_delta), d)))
    return updates


def write_edge_updates(
    sink: EdgeWeightSink,
    delta: torch.Tensor,
    pre_ids: Sequence[str],
    post_ids: Sequence[str],
    *,
    rel: str,
    max_delta: float,
    min_abs: float = 1e-6,
    self_edges: bool = False,
) -> int:
    """Write :func:`edge_updates` to ``sink``; returns how many were written. All checks run before the
    first write; a sink with ``update_edge_weights`` (T4DX) takes them in one transaction, so an unknown
    edge there writes nothing."""
    if not isinstance(sink, EdgeWeightSink):
        raise InvalidInput("sink", type(sink).__name__, "must have update_edge_weight(src, dst, rel, delta)")
    updates = edge_updates(
        delta, pre_ids, post_ids, rel=rel, max_delta=max_delta, min_abs=min_abs, self_edges=self_edges
    )
    batch = getattr(sink, "update_edge_weights", None)
    if callable(batch):
        if updates:
            batch([tuple(update) for update in updates])
        return len(updates)
    for update in updates:
        sink.update_edge_weight(update.src, update.dst, update.rel, delta=update.delta)
    return len(updates)
