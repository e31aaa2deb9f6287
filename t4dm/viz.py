"""Figures of glass-box records (needs the ``viz`` extra: matplotlib).

    from t4dm.viz import plot_glassbox
    plot_glassbox("run.npz", "run.png")          # or a GlassBox still in memory

One figure, one row of panels per kind of record present: the residual stream's per-token norm per decoder
layer (a layers × tokens heat map), each block's firing rate over the tokens, the norm of what the cortical
stack added to the stream, and each block's neuromodulator levels per call.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from t4dm.errors import InvalidInput

__all__ = ["plot_glassbox"]


def _box(source: Any) -> Any:
    from t4dm.spiking.glassbox import GlassBox

    if isinstance(source, GlassBox):
        return source
    if isinstance(source, (str, os.PathLike)):
        return GlassBox.load(source)
    raise InvalidInput("source", type(source).__name__, "expected a GlassBox or the path of a saved one")


def _has(box: Any, getter: Any, index: int, kind: str) -> np.ndarray | None:
    if kind not in box.kinds:
        return None
    try:
        return getter(index, kind).float().numpy()
    except InvalidInput:
        return None


def plot_glassbox(source: Any, out: str | os.PathLike[str], *, row: int = 0) -> str:
    """Draw the records of ``source`` (a :class:`~t4dm.spiking.GlassBox` or a ``.npz`` it saved) for batch row
    ``row`` into the PNG ``out``; returns its path. Raises :class:`~t4dm.errors.InvalidInput` when the box
    holds nothing to draw or ``row`` is not in the batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from t4dm.spiking.neuromod import MODULATORS

    box = _box(source)
    out = os.fspath(out)
    panels: list[tuple[str, Any]] = []

    layers = box.layers()
    norms = [(i, _has(box, box.get_layer, i, "residual_norm")) for i in layers]
    norms = [(i, a) for i, a in norms if a is not None]
    if norms:
        panels.append(("residual", norms))
    deltas = [(i, _has(box, box.get_layer, i, "stack_delta_norm")) for i in layers]
    deltas = [(i, a) for i, a in deltas if a is not None]
    if deltas:
        panels.append(("delta", deltas))
    rates = [(b, _has(box, box.get, b, "firing_rate")) for b in box.blocks()]
    rates = [(b, a) for b, a in rates if a is not None]
    if rates:
        panels.append(("rates", rates))
    levels = [(b, _has(box, box.get, b, "levels")) for b in box.blocks()]
    levels = [(b, a) for b, a in levels if a is not None]
    if levels:
        panels.append(("levels", levels))
    if not panels:
        raise InvalidInput(
            "source", "<glass box>", "holds no residual_norm, stack_delta_norm, firing_rate or levels"
        )
    per_token = [a for what, group in panels if what != "levels" for _, a in group]
    if per_token and not 0 <= row < per_token[0].shape[0]:
        raise InvalidInput("row", row, f"must be a batch row in [0, {per_token[0].shape[0] - 1}]")

    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.6 * len(panels)), squeeze=False)
    for ax, (what, group) in zip(axes[:, 0], panels, strict=True):
        if what == "residual":
            grid = np.stack([a[row] for _, a in group])
            image = ax.imshow(grid, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis")
            ticks = range(0, len(group), max(1, len(group) // 12))
            ax.set_yticks(list(ticks), [str(group[t][0]) for t in ticks])
            ax.set_ylabel("decoder layer")
            ax.set_title("residual stream: per-token L2 norm after each layer")
            fig.colorbar(image, ax=ax, fraction=0.03)
        elif what == "delta":
            for i, a in group:
                ax.plot(a[row], label=f"after layer {i}")
            ax.set_ylabel("‖Δ‖")
            ax.set_title("what the cortical stack added to the residual stream")
            ax.legend(fontsize=7)
        elif what == "rates":
            for b, a in group:
                ax.plot(a[row], label=f"block {b}")
            ax.set_ylabel("firing rate")
            ax.set_title("spiking blocks: fraction of neurons firing per token")
            ax.legend(fontsize=7, ncol=min(6, len(group)))
        else:
            width = 0.8 / len(MODULATORS)
            x = np.arange(len(group))
            for m, name in enumerate(MODULATORS):
                ax.bar(x + m * width, [a[:, m].mean() for _, a in group], width, label=name)
            ax.set_xticks(x + 0.4 - width / 2, [f"block {b}" for b, _ in group])
            ax.set_ylabel("level (mean over calls)")
            ax.set_title("neuromodulator levels")
            ax.legend(fontsize=7, ncol=4)
        if what in ("residual", "delta", "rates"):
            ax.set_xlabel("token")
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
