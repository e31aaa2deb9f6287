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
stack ``oscillator`` (the threshold bias ``[T]``; ``[B, T]`` once rows keep their own clocks).

Per decoder layer of a language model (recorded by :meth:`t4dm.qwen.UnifiedModel.record`, kept apart from
the blocks: :meth:`GlassBox.get_layer`): ``residual_norm`` (the L2 norm of each token's residual stream after
the layer ``[B, T]``), ``residual`` (the stream itself ``[B, T, hidden]``: large, only when asked) and
``stack_delta_norm`` (the norm of what the cortical stack added ``[B, T]``, on the layer it follows).

:meth:`GlassBox.save` writes every record to one ``.npz`` file that :meth:`GlassBox.load` (and
:func:`t4dm.viz.plot_glassbox`) read back without torch models.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from t4dm.errors import InvalidInput

if TYPE_CHECKING:
    from torch import nn

__all__ = ["DEFAULT_KINDS", "KINDS", "LAYER_KINDS", "GlassBox", "membrane_trace"]

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
#: Recorded per decoder layer of a language model (see the module docstring).
LAYER_KINDS = ("residual_norm", "residual", "stack_delta_norm")
#: Recorded by default: everything but the membrane replay and the currents (and the full residual stream).
DEFAULT_KINDS = (*(k for k in KINDS if k not in ("membrane", "current")), "residual_norm", "stack_delta_norm")
STACK = -1  # block index under which stack-level records (the oscillator) are kept
_LAYER = "layer"  # site tag of per-layer records


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
        kinds = (record,) if isinstance(record, str) else tuple(record)
        for kind in kinds:
            if kind not in KINDS and kind not in LAYER_KINDS:
                raise InvalidInput(
                    "record", kind, f"unknown glass-box kind (known: {list(KINDS) + list(LAYER_KINDS)})"
                )
        self.kinds = frozenset(kinds)
        self.to_cpu = to_cpu
        self._data: dict[tuple[Any, str], list[torch.Tensor]] = defaultdict(list)
        self._saved: dict[tuple[Any, str], np.ndarray] | None = None  # records read back by load()

    def wants(self, kind: str) -> bool:
        return kind in self.kinds

    def put(self, block: int, kind: str, value: torch.Tensor) -> None:
        value = value.detach()
        self._data[(block, kind)].append(value.cpu() if self.to_cpu else value.clone())

    def put_layer(self, layer: int, kind: str, value: torch.Tensor) -> None:
        """Record ``value`` of decoder layer ``layer`` (a per-layer kind)."""
        self.put((_LAYER, layer), kind, value)  # type: ignore[arg-type]

    def _joined(self, site: Any, kind: str, what: str, index: int) -> torch.Tensor:
        if kind not in self.kinds:
            raise InvalidInput("kind", kind, f"not recorded (recording: {sorted(self.kinds)})")
        if self._saved is not None and (site, kind) in self._saved:
            return torch.from_numpy(self._saved[(site, kind)])
        chunks = self._data.get((site, kind))
        if not chunks:
            raise InvalidInput(
                what, index, f"has no {kind!r} recording (was the model run with the box attached?)"
            )
        if kind == "levels":
            return torch.stack(chunks)
        if kind == "oscillator":
            rows = max((c.shape[0] for c in chunks if c.dim() == 2), default=None)
            if rows is None:
                return torch.cat(chunks)
            # a clock per row (a left-padded batch): [B, T], shared-clock calls repeated over the rows
            return torch.cat([c.expand(rows, -1) if c.dim() == 1 else c for c in chunks], dim=1)
        return torch.cat(chunks, dim=1)

    def get(self, block: int, kind: str) -> torch.Tensor:
        """The recordings of ``kind`` for ``block`` (``-1`` for the stack), all calls concatenated along the
        time axis (``levels``: stacked, ``[calls, 4]``)."""
        return self._joined(block, kind, "block", block)

    def get_layer(self, layer: int, kind: str) -> torch.Tensor:
        """The recordings of ``kind`` for decoder layer ``layer``, all calls concatenated along time."""
        return self._joined((_LAYER, layer), kind, "layer", layer)

    def _sites(self) -> set[Any]:
        sites = {site for site, _ in self._data}
        if self._saved is not None:
            sites |= {site for site, _ in self._saved}
        return sites

    def records(self) -> list[tuple[int, str, torch.Tensor]]:
        """Every block and stack record as ``(block or -1, kind, tensor)`` (calls joined as :meth:`get`)."""
        sites = sorted(s for s in self._sites() if isinstance(s, int))
        return [(site, kind, self.get(site, kind)) for site in sites for kind in sorted(self.kinds)
                if (site, kind) in self._data or (self._saved is not None and (site, kind) in self._saved)]  # fmt: skip

    def blocks(self) -> list[int]:
        return sorted(s for s in self._sites() if isinstance(s, int) and s != STACK)

    def layers(self) -> list[int]:
        """The decoder layers that have records."""
        return sorted(s[1] for s in self._sites() if isinstance(s, tuple))

    def clear(self) -> None:
        self._data.clear()
        self._saved = None

    # ------------------------------------------------------------------ files
    @staticmethod
    def _key(site: Any, kind: str) -> str:
        if isinstance(site, tuple):
            return f"layer{site[1]}/{kind}"
        return f"stack/{kind}" if site == STACK else f"block{site}/{kind}"

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write every record (float32 or the recorded dtype, on the CPU) to ``path`` (``.npz``, keys like
        ``block0/spikes``, ``layer17/residual_norm``, ``stack/oscillator``); returns the path written.
        Written to a temporary file and renamed, so a crash leaves no half-written file."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            raise InvalidInput("path", path, "must end with .npz")
        arrays = {"kinds": np.array(sorted(self.kinds))}
        for site, kind in sorted({*self._data, *(self._saved or {})}, key=lambda k: self._key(*k)):
            value = self.get_layer(site[1], kind) if isinstance(site, tuple) else self.get(site, kind)
            arrays[self._key(site, kind)] = value.detach().cpu().numpy()
        tmp = f"{path}.tmp-{os.getpid()}.npz"
        try:
            np.savez_compressed(tmp, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GlassBox:
        """A box holding the records :meth:`save` wrote (read-only use: ``get``, ``get_layer``, ``blocks``,
        ``layers``)."""
        path = os.fspath(path)
        try:
            files = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidInput("path", path, f"not a glass-box .npz file: {exc}") from exc
        with files:
            if "kinds" not in files.files:
                raise InvalidInput("path", path, "not a glass-box .npz file (no 'kinds')")
            box = cls([str(k) for k in files["kinds"]])
            saved: dict[tuple[Any, str], np.ndarray] = {}
            for key in files.files:
                if key == "kinds":
                    continue
                site_name, kind = key.split("/", 1)
                if site_name == "stack":
                    site: Any = STACK
                elif site_name.startswith("layer"):
                    site = (_LAYER, int(site_name[5:]))
                else:
                    site = int(site_name[5:])
                saved[(site, kind)] = files[key]
        box._saved = saved
        return box

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
