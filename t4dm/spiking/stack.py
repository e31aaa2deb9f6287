"""The cortical stack: ``n_blocks`` cortical blocks sharing one context, one neuromodulator bus and one
oscillator clock."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from t4dm.errors import InvalidInput

from .block import BlockSignals, BlockState, CorticalBlock, check_context
from .config import CorticalConfig, check_int
from .glassbox import STACK, GlassBox
from .neuromod import NeuromodBus
from .ops import KERNEL_OPS, SpikingOps
from .oscillator import OscillatorBias

__all__ = ["CorticalStack", "StackOutput", "StackState", "parameter_count"]


class StackState(NamedTuple):
    """The stream state of a stack: one :class:`~t4dm.spiking.block.BlockState` per block and the oscillator
    clock (tokens seen: a 0-dim int64 tensor, or ``[B]`` when rows have seen different numbers of tokens)."""

    blocks: tuple[BlockState, ...]
    clock: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.blocks[0].membrane.shape[0])

    def rows(self, index: torch.Tensor) -> StackState:
        """The state of rows ``index`` (a 1-D index tensor), in that order."""
        blocks = tuple(BlockState(*(t.index_select(0, index) for t in b)) for b in self.blocks)
        clock = (
            self.clock if self.clock.dim() == 0 else self.clock.index_select(0, index.to(self.clock.device))
        )
        return StackState(blocks, clock)

    @classmethod
    def cat(cls, states: list[StackState]) -> StackState:
        """The states of several batches as one batch, rows in order; the clock becomes one per row."""
        if not states:
            raise InvalidInput("states", 0, "need at least one state to concatenate")
        blocks = tuple(
            BlockState(*(torch.cat(parts) for parts in zip(*per_block, strict=True)))
            for per_block in zip(*(s.blocks for s in states), strict=True)
        )
        clock = torch.cat([s.clock.expand(s.batch_size) for s in states])
        return cls(blocks, clock)


class StackOutput(NamedTuple):
    """``hidden`` ``[B, T, D]``; ``state`` (with ``return_state=True``) or None; ``signals``: one
    :class:`~t4dm.spiking.block.BlockSignals` per block."""

    hidden: torch.Tensor
    state: StackState | None
    signals: tuple[BlockSignals, ...]

    def signal_means(self) -> dict[str, torch.Tensor]:
        """Each signal averaged over batch and time, ``[n_blocks]`` (e.g. for
        :meth:`~t4dm.spiking.neuromod.NeuromodBus.observe`)."""
        return {
            name: torch.stack([getattr(s, name).mean() for s in self.signals])
            for name in BlockSignals._fields
        }


class CorticalStack(nn.Module):
    """``n_blocks`` :class:`~t4dm.spiking.block.CorticalBlock` in sequence on ``[B, T, D]``.

    The blocks share one context (normalised once), the levels of one :class:`NeuromodBus` (row ``i`` for
    block ``i``) and one :class:`OscillatorBias` clock; the output is layer-normalised.

    Args:
        n_blocks, d_model, n_heads: sizes; other :class:`CorticalConfig` fields as keyword arguments.
        oscillator: keyword arguments of :class:`OscillatorBias`, or None for no oscillation.
        bus: keyword arguments of :class:`NeuromodBus` (rates).
        ops: the kernel functions (default: :data:`~t4dm.spiking.ops.KERNEL_OPS`).
    """

    def __init__(
        self,
        n_blocks: int = 6,
        d_model: int = 1024,
        n_heads: int = 16,
        *,
        oscillator: dict[str, Any] | None = None,
        bus: dict[str, Any] | None = None,
        ops: SpikingOps = KERNEL_OPS,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        check_int("n_blocks", n_blocks)
        self.config = CorticalConfig.from_kwargs(d_model=d_model, n_heads=n_heads, **kwargs)
        self.n_blocks = n_blocks
        self.recorder: GlassBox | None = None
        self.blocks = nn.ModuleList(
            CorticalBlock(config=self.config, ops=ops, index=i) for i in range(n_blocks)
        )
        self.bus = NeuromodBus(n_blocks, **(bus or {}))
        self.oscillator = OscillatorBias(**oscillator) if oscillator is not None else OscillatorBias()
        self.context_norm = nn.LayerNorm(d_model, eps=self.config.norm_eps)
        self.out_norm = nn.LayerNorm(d_model, eps=self.config.norm_eps)

    @classmethod
    def without_oscillator(cls, *args: Any, **kwargs: Any) -> CorticalStack:
        """A stack whose oscillator amplitudes are all zero."""
        kwargs["oscillator"] = {"delta_amp": 0.0, "theta_amp": 0.0, "gamma_amp": 0.0}
        return cls(*args, **kwargs)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> StackState:
        """A stream's first state (equivalent to ``state=None``)."""
        blocks = tuple(b.init_state(batch_size, device) for b in self.blocks)
        return StackState(blocks, torch.zeros((), dtype=torch.int64, device=device))

    def _check(self, x: torch.Tensor, state: StackState | None, novelty: torch.Tensor | None) -> None:
        D = self.config.d_model
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 3:
            what = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InvalidInput("x", what, f"must be a floating tensor [B, T, D] with D = {D}")
        B, T, d = x.shape
        if d != D or B < 1 or T < 1:
            raise InvalidInput("x", tuple(x.shape), f"must have shape [B, T, {D}] with B, T >= 1")
        if state is not None:
            if not isinstance(state, StackState) or len(state.blocks) != self.n_blocks:
                raise InvalidInput(
                    "state", type(state).__name__, f"must be a StackState of {self.n_blocks} blocks"
                )
            if state.blocks[0].membrane.shape[0] != B:
                raise InvalidInput(
                    "state",
                    tuple(state.blocks[0].membrane.shape),
                    f"was made for another batch size (x has B={B})",
                )
            clock = state.clock
            if (
                not isinstance(clock, torch.Tensor)
                or clock.dtype != torch.int64
                or clock.shape not in ((), (B,))
            ):
                what = (tuple(clock.shape), str(clock.dtype)) if isinstance(clock, torch.Tensor) else clock
                raise InvalidInput("state.clock", what, f"must be an int64 tensor of shape () or ({B},)")
        if novelty is not None and (not isinstance(novelty, torch.Tensor) or tuple(novelty.shape) != (B, T)):
            what = tuple(novelty.shape) if isinstance(novelty, torch.Tensor) else type(novelty).__name__
            raise InvalidInput("novelty", what, f"must be a tensor [B, T] = [{B}, {T}] in [0, 1]")

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        state: StackState | None = None,
        novelty: torch.Tensor | None = None,
        return_state: bool = False,
    ) -> StackOutput:
        """Run the stack on ``x`` ``[B, T, D]`` with an optional top-down ``context`` (``[B, T, D]``,
        ``[B, 1, D]`` or ``[B, D]``, e.g. retrieved memory vectors) and the ``state`` of the stream so far.

        Running a stream chunk by chunk (``return_state=True``, the returned state passed to the next call)
        gives the hidden states of the whole sequence at once, up to float32 rounding.
        """
        self._check(x, state, novelty)
        B, T, D = x.shape
        context = check_context(context, B, T, D)
        if context is not None:
            context = self.context_norm(context.to(x.dtype))
        clock = torch.zeros((), dtype=torch.int64, device=x.device) if state is None else state.clock
        bias = self.oscillator(clock, T)
        rec = self.recorder
        if rec is not None and rec.wants("oscillator"):
            rec.put(STACK, "oscillator", bias)
        levels = self.bus.levels
        hidden = x
        block_states = []
        signals = []
        for i, block in enumerate(self.blocks):
            hidden, block_state, block_signals = block(
                hidden,
                levels[i],
                context=context,
                bias=bias,
                state=None if state is None else state.blocks[i],
                novelty=novelty,
                return_state=return_state,
            )
            block_states.append(block_state)
            signals.append(block_signals)
        new_state = StackState(tuple(block_states), clock + T) if return_state else None
        return StackOutput(self.out_norm(hidden), new_state, tuple(signals))

    def extra_repr(self) -> str:
        return f"n_blocks={self.n_blocks}"


def parameter_count(module: nn.Module) -> int:
    """Trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
