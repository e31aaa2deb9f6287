"""Token-by-token decoding through a cortical stack with its stream state held in fixed buffers, so that on
CUDA the whole step — six blocks, some nine hundred small kernels — is captured once as a CUDA graph and
replayed with one launch per token.

Eager decoding pays the CPU cost of launching every kernel of every block each token; next to a 3B
backbone's decoding step that is what would make the stack slow (issue 7 wants the unified model to decode at
0.9× the plain model's speed or better). A graph needs fixed addresses: the token, the context and the state
live in buffers the decoder owns, each step copies the new state into the state buffers (inside the graph),
and the outputs are the graph's own tensors, overwritten by the next step.

    decoder = StackDecoder(stack, state, context=True)   # state: the stream state after the prompt
    out = decoder(x_t, ctx)                               # x_t [B, 1, D]; out.hidden [B, 1, D]
    out.state is decoder.state                            # advanced in place

Off CUDA (or with ``graph=False``) the same buffers run eagerly: that is the path the CPU tests compare with
plain streaming, token by token, exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from t4dm.errors import InvalidInput

from .block import BlockState
from .stack import CorticalStack, StackOutput, StackState

__all__ = ["StackDecoder"]


def _tensors(state: StackState) -> list[torch.Tensor]:
    return [t for block in state.blocks for t in block] + [state.clock]


class StackDecoder:
    """Decodes one token at a time through ``stack`` from ``state``, the state in buffers of its own.

    Args:
        stack: the :class:`~t4dm.spiking.stack.CorticalStack` (its weights, bus levels and oscillator are read
            in place each step: training or :meth:`~t4dm.spiking.neuromod.NeuromodBus.set` between steps is
            seen; moving the module to another device or dtype is not — make a new decoder).
        state: the stream state to start from (copied; e.g. the state after the prompt).
        context: whether steps take a top-down context (``[B, D]``, ``[B, 1, D]``). A step whose context's
            presence differs runs eagerly on the same buffers.
        dtype: the token's dtype (default: the stack's parameters').
        graph: capture the step as a CUDA graph (default: on CUDA). ``True`` off CUDA raises.
        warmup: eager steps before the capture (lazy initialisation, Triton autotuning), run on a copy of the
            state: the state the decoder starts from is unchanged.

    Calling it returns a :class:`~t4dm.spiking.stack.StackOutput` whose ``state`` is :attr:`state` (advanced in
    place) and whose ``hidden`` and ``signals`` are valid until the next step (clone to keep them). A glass-box
    recorder on the stack or any block makes the steps eager (a graph records nothing; none is attached while
    the graph is captured). Decoding needs no gradients: a call
    with autograd on raises.
    """

    def __init__(
        self,
        stack: CorticalStack,
        state: StackState,
        *,
        context: bool = False,
        dtype: torch.dtype | None = None,
        graph: bool | None = None,
        warmup: int = 2,
    ) -> None:
        if not isinstance(stack, CorticalStack):
            raise InvalidInput("stack", type(stack).__name__, "expected a CorticalStack")
        if not isinstance(state, StackState) or len(state.blocks) != stack.n_blocks:
            raise InvalidInput(
                "state", type(state).__name__, f"expected a StackState of {stack.n_blocks} blocks"
            )
        device = state.blocks[0].membrane.device
        parameter = next(stack.parameters())
        if parameter.device != device:
            raise InvalidInput("state", str(device), f"is not on the stack's device {parameter.device}")
        if graph is None:
            graph = device.type == "cuda"
        if graph and device.type != "cuda":
            raise InvalidInput("graph", graph, f"a CUDA graph needs a CUDA device (the stack is on {device})")
        self.stack = stack
        self._recordable = [m for m in stack.modules() if hasattr(m, "recorder")]  # the stack and its blocks
        B, D = state.batch_size, stack.config.d_model
        self.state = StackState(
            tuple(BlockState(*(t.detach().clone() for t in block)) for block in state.blocks),
            state.clock.detach().clone(),
        )
        dtype = dtype or parameter.dtype
        self.x = torch.zeros(B, 1, D, dtype=dtype, device=device)
        self.context = torch.zeros(B, 1, D, dtype=dtype, device=device) if context else None
        self.graph: Any = None
        self._out: StackOutput | None = None
        self._addresses = self._stack_addresses()
        if graph:
            self._capture(warmup)

    def _stack_addresses(self) -> tuple[int, ...]:
        return tuple(t.data_ptr() for t in (*self.stack.parameters(), *self.stack.buffers()))

    def fits(self, state: StackState, context: bool, dtype: torch.dtype) -> bool:
        """Whether this decoder can continue ``state`` (after :meth:`load`) for ``stack`` as it is now: the same
        shapes, context and token dtype, and the stack's weights and buffers still where the graph reads them
        (moving the module or replacing a parameter makes a new decoder necessary)."""
        return (
            (self.context is not None) == context
            and self.x.dtype == dtype
            and all(a.shape == b.shape for a, b in zip(_tensors(self.state), _tensors(state), strict=True))
            and self._stack_addresses() == self._addresses
        )

    @property
    def batch_size(self) -> int:
        return int(self.x.shape[0])

    def load(self, state: StackState) -> None:
        """Continue from ``state`` instead (copied into the buffers; the graph stays valid)."""
        if not isinstance(state, StackState) or len(state.blocks) != self.stack.n_blocks:
            raise InvalidInput(
                "state", type(state).__name__, f"expected a StackState of {self.stack.n_blocks} blocks"
            )
        mine = _tensors(self.state)
        theirs = _tensors(state)
        for dst, src in zip(mine, theirs, strict=True):
            if src.shape != dst.shape:
                raise InvalidInput(
                    "state", tuple(src.shape), f"expected the decoder's shapes, e.g. {tuple(dst.shape)}"
                )
        with torch.no_grad():
            for dst, src in zip(mine, theirs, strict=True):
                dst.copy_(src)

    def _step(self, context: torch.Tensor | None = None, own_context: bool = True) -> StackOutput:
        """The step on the buffers: the stack on (x, context, state), then the new state into the buffers.
        ``own_context``: the context buffer (what the graph captures), else ``context``."""
        ctx = self.context if own_context else context
        out = self.stack(self.x, ctx, state=self.state, return_state=True)
        assert out.state is not None
        for dst, src in zip(_tensors(self.state), _tensors(out.state), strict=True):
            dst.copy_(src)
        return StackOutput(out.hidden, self.state, out.signals)

    def _recording(self) -> bool:
        return any(m.recorder is not None for m in self._recordable)

    @contextlib.contextmanager
    def _unrecorded(self) -> Iterator[None]:
        """No glass box while warming up and capturing: a graph would hold its records' tensors."""
        previous = [m.recorder for m in self._recordable]
        for m in self._recordable:
            m.recorder = None
        try:
            yield
        finally:
            for m, recorder in zip(self._recordable, previous, strict=True):
                m.recorder = recorder

    def _capture(self, warmup: int) -> None:
        saved = [t.clone() for t in _tensors(self.state)]
        with torch.no_grad(), self._unrecorded():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(max(1, warmup)):
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
            for dst, src in zip(_tensors(self.state), saved, strict=True):
                dst.copy_(src)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._out = self._step()

    def __call__(self, x: torch.Tensor, context: torch.Tensor | None = None) -> StackOutput:
        """One token ``x`` ``[B, 1, D]`` (or ``[B, D]``) with ``context`` ``[B, D]`` / ``[B, 1, D]`` or None."""
        if torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.stack.parameters())
        ):
            raise InvalidInput("grad", True, "decoding runs without autograd: call it under torch.no_grad()")
        B, D = self.batch_size, self.x.shape[-1]
        if not isinstance(x, torch.Tensor) or x.numel() != B * D or x.shape[-1] != D or x.dim() not in (2, 3):
            what = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InvalidInput("x", what, f"expected one token per row: [{B}, 1, {D}] or [{B}, {D}]")
        if context is not None and (
            not isinstance(context, torch.Tensor) or context.numel() != B * D or context.shape[-1] != D
        ):
            what = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
            raise InvalidInput("context", what, f"expected [{B}, {D}] or [{B}, 1, {D}]")
        with torch.no_grad():
            self.x.copy_(x.reshape(B, 1, D))
            if (context is None) != (self.context is None):  # another shape of step: eager, same buffers
                ctx = None if context is None else context.reshape(B, 1, D).to(self.x.dtype)
                return self._step(ctx, own_context=False)
            if context is not None:
                assert self.context is not None
                self.context.copy_(context.reshape(B, 1, D))
            if self.graph is None or self._recording():
                return self._step()
            self.graph.replay()
            assert self._out is not None
            return self._out
