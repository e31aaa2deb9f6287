"""One cortical block: six stages on the residual stream ``[B, T, D]``."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from t4dm.errors import InvalidInput

from .config import CorticalConfig
from .glassbox import GlassBox, membrane_trace
from .neuromod import ACH, DEFAULT_LEVELS, NE, SHT
from .ops import KERNEL_OPS, SpikingOps
from .stages import (
    ApicalModulation,
    LIFNeurons,
    NoveltyDetector,
    RWKVRecurrence,
    SpikeAttention,
    ThalamicGate,
)

__all__ = ["BlockSignals", "BlockState", "CorticalBlock", "check_context"]


class BlockState(NamedTuple):
    """What a block carries from one chunk of a stream to the next (all float32).

    membrane ``[B, D]`` (stage ② LIF), qk_membrane ``[B, 2D]`` (stage ③'s q/k LIF), attention
    ``[B, H, K, K]`` (spike-attention state), familiarity ``[B, D]`` (the novelty detector's running
    average), shift ``[B, D]`` (RWKV token shift: the last input token), rwkv ``[B, H, K, K]`` (RWKV state).
    A state of zeros is the same as no state.
    """

    membrane: torch.Tensor
    qk_membrane: torch.Tensor
    attention: torch.Tensor
    familiarity: torch.Tensor
    shift: torch.Tensor
    rwkv: torch.Tensor

    @classmethod
    def zeros(
        cls, batch_size: int, config: CorticalConfig, device: torch.device | str | None = None
    ) -> BlockState:
        B, D, H, K = batch_size, config.d_model, config.n_heads, config.head_dim
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float32, device=device)  # noqa: E731
        return cls(z(B, D), z(B, 2 * D), z(B, H, K, K), z(B, D), z(B, D), z(B, H, K, K))


class BlockSignals(NamedTuple):
    """Per-token signals of a block, ``[B, T]`` float32: novelty (stage ①), prediction error and
    forward-forward goodness (stage ④), and the stage-② firing rate (fraction of neurons spiking)."""

    novelty: torch.Tensor
    prediction_error: torch.Tensor
    goodness: torch.Tensor
    firing_rate: torch.Tensor


def check_context(context: torch.Tensor | None, B: int, T: int, D: int) -> torch.Tensor | None:
    """``context`` as ``[B, T, D]`` or ``[B, 1, D]`` (a ``[B, D]`` context is one vector per sequence)."""
    if context is None:
        return None
    if not isinstance(context, torch.Tensor) or not context.is_floating_point():
        raise InvalidInput("context", type(context).__name__, "must be a floating tensor [B, T, D] or [B, D]")
    if context.dim() == 2:
        context = context[:, None]
    if context.dim() != 3 or context.shape[0] != B or context.shape[1] not in (1, T) or context.shape[2] != D:
        raise InvalidInput(
            "context",
            tuple(context.shape),
            f"must have shape [B, T, D] = [{B}, {T}, {D}], [{B}, 1, {D}] or [{B}, {D}]",
        )
    return context


class CorticalBlock(nn.Module):
    """A cortical block: ``y = x + g_NE · W_out(⑤(④(③(②(①(x))))))`` on ``x`` ``[B, T, D]``.

    ① :class:`~t4dm.spiking.stages.ThalamicGate` computes ``gate`` from ``x̂ = LN(x)``, the novelty of each
    token and ACh/NE; ② :class:`~t4dm.spiking.stages.LIFNeurons` spike on the gated drive
    ``I = g_NE · gate ⊙ LN_in(W_in x̂) − b_osc`` (the NE gain ``g_NE = exp(κ_NE (NE − 0.5))`` on the current
    is the threshold divided by ``g_NE``); ③ :class:`~t4dm.spiking.stages.SpikeAttention` on the spikes;
    ④ :class:`~t4dm.spiking.stages.ApicalModulation` against the context; ⑤
    :class:`~t4dm.spiking.stages.RWKVRecurrence` on ``LN(z)``; ⑥ the output projection ``W_out``, the NE
    gain and the residual.

    Args:
        d_model, n_heads: sizes (or pass ``config``); other :class:`~t4dm.spiking.config.CorticalConfig`
            fields as keyword arguments.
        config: a whole config instead of the keywords.
        ops: the kernel functions (default: the public functions of :mod:`t4dm.kernels`).
        index: the block's position in a stack (names its glass-box records).
    """

    def __init__(
        self,
        d_model: int = 1024,
        n_heads: int = 16,
        *,
        config: CorticalConfig | None = None,
        ops: SpikingOps = KERNEL_OPS,
        index: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if config is None:
            config = CorticalConfig.from_kwargs(d_model=d_model, n_heads=n_heads, **kwargs)
        elif kwargs:
            raise InvalidInput("kwargs", sorted(kwargs), "pass either config or keyword fields, not both")
        self.config = config
        self.index = index
        self.recorder: GlassBox | None = None
        D = config.d_model
        self.norm = nn.LayerNorm(D, eps=config.norm_eps)
        self.novelty = NoveltyDetector(config.familiarity_tau)
        self.gate = ThalamicGate(config)
        self.in_proj = nn.Linear(D, D, bias=False)
        self.in_norm = nn.LayerNorm(D, eps=config.norm_eps)
        nn.init.constant_(self.in_norm.weight, config.lif_input_scale)
        self.lif = LIFNeurons(config, ops)
        self.attention = SpikeAttention(config, ops)
        self.apical = ApicalModulation(config)
        self.mix_norm = nn.LayerNorm(D, eps=config.norm_eps)
        self.rwkv = RWKVRecurrence(config, ops)
        self.out_proj = nn.Linear(D, D, bias=False)
        nn.init.normal_(self.out_proj.weight, std=config.out_init_std)
        self.register_buffer(
            "default_levels", torch.tensor(DEFAULT_LEVELS, dtype=torch.float32), persistent=False
        )

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> BlockState:
        return BlockState.zeros(batch_size, self.config, device)

    def forward(
        self,
        x: torch.Tensor,
        levels: torch.Tensor | None = None,
        *,
        context: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        state: BlockState | None = None,
        novelty: torch.Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[torch.Tensor, BlockState | None, BlockSignals]:
        """Run the block on ``x`` ``[B, T, D]``.

        Args:
            levels: ``[4]`` float32 DA, NE, ACh, 5-HT (a row of the bus; neutral when None).
            context: top-down context ``[B, T, D]``, ``[B, 1, D]`` or ``[B, D]`` (normalised by the caller).
            bias: the oscillator's threshold bias ``[T]``.
            state: the state after the previous chunk (None: the start of a stream).
            novelty: ``[B, T]`` in [0, 1] to use instead of the block's own novelty detector.
            return_state: also return the state after the last token.

        Returns:
            ``(y [B, T, D], new state or None, signals)``.
        """
        B, T, D = x.shape
        if levels is None:
            levels = self.default_levels
        levels = levels.float()
        ne, ach, serotonin = levels[NE], levels[ACH], levels[SHT]
        rec = self.recorder
        context = check_context(context, B, T, D)
        if context is not None:
            context = context.to(x.dtype)

        # ① thalamic gate
        x_hat = self.norm(x)
        own_novelty, familiarity = self.novelty(x_hat, None if state is None else state.familiarity)
        if novelty is None:
            novelty = own_novelty
        elif not isinstance(novelty, torch.Tensor) or tuple(novelty.shape) != (B, T):
            what = tuple(novelty.shape) if isinstance(novelty, torch.Tensor) else type(novelty).__name__
            raise InvalidInput("novelty", what, f"must be a tensor [B, T] = [{B}, {T}] in [0, 1]")
        gate = self.gate(x_hat, novelty, ach, ne)
        # ② LIF neurons on the gated drive
        gain = torch.exp(self.config.kappa_ne * (ne - 0.5))
        drive = gain.to(x.dtype) * gate * self.in_norm(self.in_proj(x_hat))
        v0 = None if state is None else state.membrane
        spikes, membrane, current = self.lif(drive, v0, bias)
        # ③ spike attention
        a, qk_spikes, qk_membrane, attention_state = self.attention(
            spikes,
            serotonin,
            bias,
            None if state is None else state.qk_membrane,
            None if state is None else state.attention,
            return_state,
        )
        # ④ apical modulation
        z, prediction_error, goodness = self.apical(x_hat, a, context, ach)
        # ⑤ RWKV recurrence with token shift
        mixed, shift, rwkv_state = self.rwkv(
            self.mix_norm(z),
            serotonin,
            None if state is None else state.shift,
            None if state is None else state.rwkv,
            return_state,
        )
        # ⑥ output projection, neuromodulator gain, residual
        y = x + gain.to(x.dtype) * self.out_proj(mixed)

        firing_rate = spikes.detach().mean(-1, dtype=torch.float32)
        signals = BlockSignals(novelty, prediction_error, goodness, firing_rate)
        if rec is not None:
            self._record(rec, gate, spikes, qk_spikes, current, v0, levels, signals)
        new_state = None
        if return_state:
            new_state = BlockState(membrane, qk_membrane, attention_state, familiarity, shift, rwkv_state)
        return y, new_state, signals

    def _record(
        self,
        rec: GlassBox,
        gate: torch.Tensor,
        spikes: torch.Tensor,
        qk_spikes: torch.Tensor,
        current: torch.Tensor,
        v0: torch.Tensor | None,
        levels: torch.Tensor,
        signals: BlockSignals,
    ) -> None:
        i = self.index
        for kind, value in (("gate", gate), ("spikes", spikes), ("qk_spikes", qk_spikes), ("current", current),
                            ("levels", levels)):  # fmt: skip
            if rec.wants(kind):
                rec.put(i, kind, value)
        for kind, value in zip(BlockSignals._fields, signals, strict=True):
            if rec.wants(kind):
                rec.put(i, kind, value)
        if rec.wants("membrane"):
            cfg = self.config
            rec.put(
                i, "membrane", membrane_trace(current, spikes, v0, cfg.tau_m, cfg.v_threshold, cfg.v_reset)
            )

    def extra_repr(self) -> str:
        c = self.config
        return f"index={self.index}, d_model={c.d_model}, n_heads={c.n_heads}, head_dim={c.head_dim}"
