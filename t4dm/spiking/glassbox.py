"""Glass-box recording: what every block's neurons, gates and modulators did, cheap when off.

A block holds ``recorder = None`` by default and tests it once per record point (``if recorder is not
None``), so an unrecorded forward pays a few attribute reads per block and nothing on the device. Attach a
:class:`GlassBox` to record::

    with GlassBox(("spikes", "membrane", "gate", "levels")).attach(stack) as box:
        stack(x)
    box.get(0, "spikes")        # [B, T, D] of block 0, all calls concatenated along T

Kinds (per block): ``spikes`` (stage ② ``[B, T, D]``), ``qk_spikes`` (stage ③'s q|k neurons ``[B, T, 2D]``),
``membrane`` (stage ②'s membrane before reset ``h_t`` ``[B, T, D]`` float32, replayed from the current and
the spikes: it costs a step-by-step loop, only when asked), ``current`` (stage ②'s input current),
``gate`` (stage ① ``[B, T, D]``), ``levels`` (the block's DA, NE, ACh, 5-HT ``[4]`` per call, stacked
``[calls, 4]``), ``novelty``, ``prediction_error``, ``goodness``, ``firing_rate`` (``[B, T]``), and on the
stack ``oscillator`` (the threshold bias ``[T]``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from t4dm.errors import InvalidInput

if TYPE_CHECKING:
    from torch import nn

__all__ = ["KINDS", "GlassBox", "membrane_trace"]

KINDS = (
    "spikes",
    "qk_spikes",
    "membrane",
    "current",
    "gate",
    "levels",
    "novelty",
    "prediction_error",
    "goodness",
    "firing_rate",
    "oscillator",
)
#: Recorded by default: everything but the membrane replay and the currents.
DEFAULT_KINDS = tuple(k for k in KINDS if k not in ("membrane", "current"))
STACK = -1  # block index under which stack-level records (the oscillator) are kept


def membrane_trace(
    current: torch.Tensor,
    spikes: torch.Tensor,
    membrane: torch.Tensor | None,
    tau: float,
    v_threshold: float,
    v_reset: float | None,
) -> torch.Tensor:
    """The LIF membrane before reset, ``h_t`` ``[B, T, N]`` float32, replayed from the current the neurons
    received ``[B, T, N]``, their spikes and the initial membrane ``[B, N]``, with the float32 operations of
    the kernel's reference (``decay_input=True``). ``h_t >= v_threshold`` exactly where a spike was emitted
    when the spikes came from that reference (the CPU path)."""
    x = current.detach().float()
    s_all = spikes.detach().float()
    v = torch.zeros_like(x[:, 0]) if membrane is None else membrane.detach().float()
    tau_t = torch.tensor(tau, dtype=torch.float32, device=x.device)
    r = 0.0 if v_reset is None else float(v_reset)
    out = []
    for t in range(x.shape[1]):
        h = v + (x[:, t] - (v - r)) / tau_t
        s = s_all[:, t]
        v = h - s * v_threshold if v_reset is None else h * (1.0 - s) + r * s
        out.append(h)
    return torch.stack(out, dim=1)


class GlassBox:
    """Records chosen kinds per block (see the module docstring).

    Args:
        record: kinds to record (default: all but ``membrane`` and ``current``).
        to_cpu: move recordings to the CPU as they come (else they stay on the device).
    """

    def __init__(self, record: Iterable[str] = DEFAULT_KINDS, *, to_cpu: bool = True) -> None:
        kinds = tuple(record)
        for kind in kinds:
            if kind not in KINDS:
                raise InvalidInput("record", kind, f"unknown glass-box kind (known: {list(KINDS)})")
        self.kinds = frozenset(kinds)
        self.to_cpu = to_cpu
        self._data: dict[tuple[int, str], list[torch.Tensor]] = defaultdict(list)

    def wants(self, kind: str) -> bool:
        return kind in self.kinds

    def put(self, block: int, kind: str, value: torch.Tensor) -> None:
        value = value.detach()
        self._data[(block, kind)].append(value.cpu() if self.to_cpu else value.clone())

    def get(self, block: int, kind: str) -> torch.Tensor:
        """The recordings of ``kind`` for ``block`` (``-1`` for the stack), all calls concatenated along the
        time axis (``levels``: stacked, ``[calls, 4]``)."""
        if kind not in self.kinds:
            raise InvalidInput("kind", kind, f"not recorded (recording: {sorted(self.kinds)})")
        chunks = self._data.get((block, kind))
        if not chunks:
            raise InvalidInput(
                "block", block, f"has no {kind!r} recording (was the stack run with the box attached?)"
            )
        if kind == "levels":
            return torch.stack(chunks)
        return torch.cat(chunks, dim=0 if kind == "oscillator" else 1)

    def blocks(self) -> list[int]:
        return sorted({block for block, _ in self._data if block != STACK})

    def clear(self) -> None:
        self._data.clear()

    @contextmanager
    def attach(self, module: nn.Module) -> Iterator[GlassBox]:
        """Attach to every block (and stack) inside ``module`` for the ``with`` body, then detach."""
        targets = [m for m in module.modules() if hasattr(m, "recorder")]
        if not targets:
            raise InvalidInput("module", type(module).__name__, "has no cortical block or stack to record")
        previous = [m.recorder for m in targets]
        for m in targets:
            m.recorder = self
        try:
            yield self
        finally:
            for m, rec in zip(targets, previous, strict=True):
                m.recorder = rec
