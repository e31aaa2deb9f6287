"""Configuration of a cortical block, checked when it is made."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from t4dm.errors import InvalidInput

__all__ = ["SURROGATE_NAMES", "CorticalConfig", "check_int", "check_number"]

#: The surrogate gradients ``lif_multistep`` accepts.
SURROGATE_NAMES = ("sigmoid", "atan", "fast_sigmoid", "superspike", "piecewise_quadratic", "erf")


def check_number(field: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:  # fmt: skip
    """``value`` as a float, or :class:`~t4dm.errors.InvalidInput` naming ``field`` when it is not a finite
    real number inside the bounds (``low_open``: ``> low`` instead of ``>= low``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(field, value, "must be a finite real number")
    value = float(value)
    if low is not None and (value <= low if low_open else value < low):
        raise InvalidInput(field, value, f"must be {'>' if low_open else '>='} {low}")
    if high is not None and (value >= high if high_open else value > high):
        raise InvalidInput(field, value, f"must be {'<' if high_open else '<='} {high}")
    return value


def check_int(field: str, value: Any, *, low: int = 1) -> int:
    """``value`` as an int >= ``low``, or :class:`~t4dm.errors.InvalidInput` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(field, value, "must be an int")
    if value < low:
        raise InvalidInput(field, value, f"must be >= {low}")
    return value


@dataclass(frozen=True)
class CorticalConfig:
    """Sizes and constants of one :class:`~t4dm.spiking.block.CorticalBlock`. Times are in tokens (steps).

    Sizes:
        d_model: width D of the residual stream, ``[B, T, D]``.
        n_heads: heads of spike attention and RWKV; ``head_dim = d_model / n_heads`` (the Triton kernels
            take head_dim <= 256; above that the public functions run PyTorch).
        gate_rank: rank of the thalamic gate's input path (D → rank → D).
        rwkv_mix_rank, rwkv_decay_rank: ranks of RWKV-6's data-dependent token-shift mix and decay.

    LIF neurons (stage ② and the q/k neurons of stage ③), the kernel's parameters:
        tau_m: membrane time constant, > 1.
        v_threshold: firing threshold, > 0; v_reset: hard-reset potential (< v_threshold) or None (soft reset).
        surrogate, surrogate_alpha, detach_reset: the surrogate gradient.
        lif_input_scale, qk_input_scale: initial gain of the normalised input currents (sets the firing
            rate at initialisation; about 10 % with the defaults).

    Time constants:
        familiarity_tau: of the novelty detector's running average of the input (tokens, > 0).
        attention_window: (shortest, longest) initial STDP window of spike attention, one per head,
            log-spaced (tokens, > 0); learnable afterwards.

    Neuromodulation (levels in [0, 1] with 0.5 neutral, dopamine in [-1, 1]):
        kappa_ne: norepinephrine gain exponent: gain = exp(kappa_ne · (NE − 0.5)).
        kappa_5ht: serotonin time-constant exponent: every log decay is multiplied by
            exp(−kappa_5ht · (5HT − 0.5)), so more serotonin means longer memory (patience).

    Initialisation:
        apical_error_init: initial weight of the prediction error passed forward (per channel).
        out_init_std: standard deviation of the output projection's initial weights.
        norm_eps: epsilon of the layer and group norms.
    """

    d_model: int = 1024
    n_heads: int = 16
    gate_rank: int = 64
    rwkv_mix_rank: int = 32
    rwkv_decay_rank: int = 64
    tau_m: float = 2.0
    v_threshold: float = 1.0
    v_reset: float | None = 0.0
    surrogate: str = "sigmoid"
    surrogate_alpha: float = 4.0
    detach_reset: bool = False
    lif_input_scale: float = 2.5
    qk_input_scale: float = 2.5
    familiarity_tau: float = 64.0
    attention_window: tuple[float, float] = (4.0, 256.0)
    kappa_ne: float = 1.0
    kappa_5ht: float = 1.0
    apical_error_init: float = 0.1
    out_init_std: float = 0.02
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_int("d_model", self.d_model)
        check_int("n_heads", self.n_heads)
        if self.d_model % self.n_heads:
            raise InvalidInput(
                "n_heads", self.n_heads, f"must divide d_model={self.d_model} (head_dim = d_model / n_heads)"
            )
        for name in ("gate_rank", "rwkv_mix_rank", "rwkv_decay_rank"):
            check_int(name, getattr(self, name))
        check_number("tau_m", self.tau_m, low=1.0, low_open=True)
        v_th = check_number("v_threshold", self.v_threshold, low=0.0, low_open=True)
        if self.v_reset is not None and check_number("v_reset", self.v_reset) >= v_th:
            raise InvalidInput("v_reset", self.v_reset, f"must be below v_threshold={v_th}")
        if self.surrogate not in SURROGATE_NAMES:
            raise InvalidInput("surrogate", self.surrogate, f"must be one of {list(SURROGATE_NAMES)}")
        check_number("surrogate_alpha", self.surrogate_alpha, low=0.0, low_open=True)
        if not isinstance(self.detach_reset, bool):
            raise InvalidInput("detach_reset", self.detach_reset, "must be a bool")
        check_number("lif_input_scale", self.lif_input_scale, low=0.0, low_open=True)
        check_number("qk_input_scale", self.qk_input_scale, low=0.0, low_open=True)
        check_number("familiarity_tau", self.familiarity_tau, low=0.0, low_open=True)
        window = self.attention_window
        if not isinstance(window, (tuple, list)) or len(window) != 2:
            raise InvalidInput("attention_window", window, "must be a pair (shortest, longest) in tokens")
        low = check_number("attention_window", window[0], low=0.0, low_open=True)
        if check_number("attention_window", window[1], low=0.0, low_open=True) < low:
            raise InvalidInput(
                "attention_window", window, "must be (shortest, longest) with shortest <= longest"
            )
        check_number("kappa_ne", self.kappa_ne, low=0.0)
        check_number("kappa_5ht", self.kappa_5ht, low=0.0)
        check_number("apical_error_init", self.apical_error_init)
        check_number("out_init_std", self.out_init_std, low=0.0)
        check_number("norm_eps", self.norm_eps, low=0.0, low_open=True)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> CorticalConfig:
        """Build from keyword arguments, rejecting unknown names with :class:`~t4dm.errors.InvalidInput`."""
        known = {f.name for f in fields(cls)}
        for name, value in kwargs.items():
            if name not in known:
                raise InvalidInput(name, value, f"unknown CorticalConfig field (known: {sorted(known)})")
        return cls(**kwargs)
