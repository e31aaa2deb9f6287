"""The neuromodulator bus: dopamine, norepinephrine, acetylcholine and serotonin levels per block.

Levels live in one ``[n_blocks, 4]`` float32 buffer (columns in :data:`MODULATORS` order), so a block reads
its row without a host sync and the levels follow the module across devices and into its state dict.

=============== ======= ========= ============================================================================
modulator       range   neutral   what reads it
=============== ======= ========= ============================================================================
dopamine (DA)   [-1, 1] 0         reward prediction error: the third factor of plasticity (learning rate)
norepinephrine  [0, 1]  0.5       arousal: LIF input gain (= threshold / gain), output gain, gate offset
acetylcholine   [0, 1]  0.5       novelty / attention: opens the thalamic gate for novel input; encoding vs
                                  retrieval (suppresses top-down apical amplification)
serotonin       [0, 1]  0.5       patience: scales every log decay (attention window, RWKV) and so the discount
=============== ======= ========= ============================================================================

Levels are set from outside (:meth:`NeuromodBus.set`) or follow signals (:meth:`NeuromodBus.observe`):

- reward ``r``: ``δ = r − V``, ``V ← V + rate_reward · δ`` (the expected reward per block), ``DA = tanh(δ)``
  (phasic), ``5HT ← 5HT + rate · (σ(r) − 5HT)`` (sustained reward raises patience);
- novelty ``ν`` in [0, 1]: ``ACh ← ACh + rate · (ν − ACh)``;
- prediction error ``ε ≥ 0``: ``NE ← NE + rate · (ε / (ε + pe_ref) − NE)`` (surprise raises arousal).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from t4dm.errors import InvalidInput

from .config import check_int, check_number

__all__ = ["DEFAULT_LEVELS", "MODULATORS", "NeuromodBus", "modulator_index"]

#: Canonical names, in the column order of the levels buffer.
MODULATORS = ("dopamine", "norepinephrine", "acetylcholine", "serotonin")
DA, NE, ACH, SHT = range(4)
#: Neutral levels: no effect on the forward pass relative to the defaults.
DEFAULT_LEVELS = (0.0, 0.5, 0.5, 0.5)
_RANGES = ((-1.0, 1.0), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0))
_ALIASES = {
    "dopamine": DA,
    "da": DA,
    "norepinephrine": NE,
    "noradrenaline": NE,
    "ne": NE,
    "acetylcholine": ACH,
    "ach": ACH,
    "serotonin": SHT,
    "5-ht": SHT,
    "5ht": SHT,
}


def modulator_index(name: str) -> int:
    """Column of ``name`` (case-insensitive; aliases DA, NE, ACh, 5-HT); :class:`InvalidInput` if unknown."""
    if not isinstance(name, str) or name.lower() not in _ALIASES:
        raise InvalidInput("modulator", name, f"unknown neuromodulator (known: {list(MODULATORS)})")
    return _ALIASES[name.lower()]


class NeuromodBus(nn.Module):
    """DA, NE, ACh and 5-HT levels for ``n_blocks`` blocks (buffer ``levels`` ``[n_blocks, 4]``).

    Args:
        n_blocks: number of blocks served.
        rate: the exponential-average rate of NE, ACh and 5-HT updates, in (0, 1].
        rate_reward: rate of the expected-reward estimate behind dopamine's prediction error, in (0, 1].
        pe_ref: prediction error at which the NE target is 0.5 (> 0).
    """

    levels: torch.Tensor
    expected_reward: torch.Tensor

    def __init__(self, n_blocks: int, *, rate: float = 0.1, rate_reward: float = 0.1, pe_ref: float = 1.0):
        super().__init__()
        self.n_blocks = check_int("n_blocks", n_blocks)
        self.rate = check_number("rate", rate, low=0.0, high=1.0, low_open=True)
        self.rate_reward = check_number("rate_reward", rate_reward, low=0.0, high=1.0, low_open=True)
        self.pe_ref = check_number("pe_ref", pe_ref, low=0.0, low_open=True)
        self.register_buffer("levels", torch.tensor([DEFAULT_LEVELS] * n_blocks, dtype=torch.float32))
        self.register_buffer("expected_reward", torch.zeros(n_blocks, dtype=torch.float32))

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # module.to(torch.bfloat16) casts float buffers: the levels stay float32 (devices still follow)
        super()._apply(fn, recurse)
        self.levels = self.levels.float()
        self.expected_reward = self.expected_reward.float()
        return self

    # ---------------------------------------------------------------- reading and setting

    def _blocks(self, block: int | None) -> slice | int:
        if block is None:
            return slice(None)
        if (
            isinstance(block, bool)
            or not isinstance(block, int)
            or not -self.n_blocks <= block < self.n_blocks
        ):
            raise InvalidInput("block", block, f"must be an int in [0, {self.n_blocks}) or None (all blocks)")
        return block % self.n_blocks

    def get(self, name: str, block: int | None = None) -> torch.Tensor:
        """The level of ``name``: a 0-dim tensor for one block, ``[n_blocks]`` for ``block=None``."""
        return self.levels[self._blocks(block), modulator_index(name)]

    def set(self, name: str, value: float | torch.Tensor | Sequence[float], block: int | None = None) -> None:
        """Set ``name`` for one block or all (``value`` a number, or ``[n_blocks]`` values for all blocks).

        Raises :class:`InvalidInput` for an unknown name, a block out of range or a value outside the
        modulator's range (dopamine [-1, 1], the others [0, 1]); nothing changes then.
        """
        column = modulator_index(name)
        rows = self._blocks(block)
        low, high = _RANGES[column]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check_number(MODULATORS[column], value, low=low, high=high)
            with torch.no_grad():
                self.levels[rows, column] = float(value)
            return
        tensor = torch.as_tensor(value, dtype=torch.float32)
        expected = () if block is not None else (self.n_blocks,)
        if tuple(tensor.shape) not in (expected, ()):
            raise InvalidInput(MODULATORS[column], value, f"must be a number or have shape {expected}")
        if not bool(torch.isfinite(tensor).all()) or bool((tensor < low).any() | (tensor > high).any()):
            raise InvalidInput(MODULATORS[column], value, f"must lie in [{low}, {high}]")
        with torch.no_grad():
            self.levels[rows, column] = tensor.to(self.levels.device)

    def reset(self) -> None:
        """Neutral levels and no expected reward."""
        with torch.no_grad():
            self.levels.copy_(torch.tensor([DEFAULT_LEVELS] * self.n_blocks, dtype=torch.float32))
            self.expected_reward.zero_()

    def as_dict(self) -> dict[str, list[float]]:
        """``{name: [level per block]}`` (one host copy)."""
        values = self.levels.detach().cpu().tolist()
        return {name: [row[i] for row in values] for i, name in enumerate(MODULATORS)}

    # ---------------------------------------------------------------- signals

    def _signal(self, field: str, value: float | torch.Tensor) -> torch.Tensor:
        """A signal as ``[n_blocks]`` float32 on the levels' device (a number or 0-dim tensor is broadcast)."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check_number(field, value)
            return self.levels.new_full((self.n_blocks,), float(value))
        if not isinstance(value, torch.Tensor):
            raise InvalidInput(field, value, "must be a number or a tensor of shape () or [n_blocks]")
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != self.n_blocks):
            raise InvalidInput(field, tuple(value.shape), f"must have shape () or [{self.n_blocks}]")
        return value.detach().to(device=self.levels.device, dtype=torch.float32).expand(self.n_blocks)

    @torch.no_grad()
    def observe(
        self,
        *,
        reward: float | torch.Tensor | None = None,
        novelty: float | torch.Tensor | None = None,
        prediction_error: float | torch.Tensor | None = None,
    ) -> None:
        """Update the levels from signals (numbers, or tensors ``[n_blocks]``, e.g. the per-block means of
        :class:`~t4dm.spiking.stack.StackOutput` signals). Runs on the device, without a host sync."""
        if reward is not None:
            r = self._signal("reward", reward)
            delta = r - self.expected_reward
            self.expected_reward.add_(self.rate_reward * delta)
            self.levels[:, DA] = torch.tanh(delta)
            self.levels[:, SHT] += self.rate * (torch.sigmoid(r) - self.levels[:, SHT])
        if novelty is not None:
            nu = self._signal("novelty", novelty).clamp(0.0, 1.0)
            self.levels[:, ACH] += self.rate * (nu - self.levels[:, ACH])
        if prediction_error is not None:
            pe = self._signal("prediction_error", prediction_error).clamp_min(0.0)
            self.levels[:, NE] += self.rate * (pe / (pe + self.pe_ref) - self.levels[:, NE])

    def extra_repr(self) -> str:
        return f"n_blocks={self.n_blocks}, rate={self.rate}, rate_reward={self.rate_reward}, pe_ref={self.pe_ref}"
