"""The unified model: a Qwen2 backbone with the spiking cortical stack hooked into its residual stream.

    tokens ─► layers 0‥L ─► [hook on layer L] h ─► down ─► CorticalStack(·, context) ─► up (zero-init) ─► h + Δ
           ─► layers L+1‥ ─► norm ─► LM head

The stack enters through a forward hook on decoder layer ``L`` (default 17): the backbone's modules, its
state-dict keys, peft's LoRA names and its KV cache stay as they are. The hook reads the stream state, the
top-down context and the memory switch from the call in progress (:meth:`UnifiedModel.forward`), so the
backbone itself never sees them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from t4dm.errors import InvalidInput
from t4dm.gate import WriteGate
from t4dm.spiking import DEFAULT_KINDS, CorticalStack, GlassBox, StackDecoder, StackOutput, StackState

from .backbone import decoder_layers, keep_nf4_layout, repacked_nf4_layers
from .lora import lora_config
from .memory import MemoryWrite, ModelMemory

__all__ = ["DEFAULT_LAYER", "GenerationOutput", "UnifiedModel", "UnifiedOutput", "sample_token"]

#: The decoder layer after which the stack runs (Qwen2.5-3B has 36: the middle of the network).
DEFAULT_LAYER = 17


class UnifiedOutput(NamedTuple):
    """What :meth:`UnifiedModel.forward` returns.

    ``logits`` ``[B, T, V]``; ``loss`` (with ``labels``) or None; ``cache`` (the backbone's KV cache, with
    ``use_cache=True``); ``stack_state`` (with ``return_stack_state=True``); ``signals`` (one
    ``BlockSignals`` per block); ``context`` ``[B, d_stack]`` the top-down context the stack was given (passed
    or read from memory; None without one), to reuse for the next chunk of the stream; ``layer_mean``
    ``[B, hidden]`` the hooked layer's output averaged over the chunk's tokens (float32, detached).
    """

    logits: torch.Tensor
    loss: torch.Tensor | None
    cache: Any
    stack_state: StackState | None
    signals: tuple[Any, ...]
    context: torch.Tensor | None
    layer_mean: torch.Tensor


def _check_sampling(do_sample: Any, temperature: Any, top_k: Any, top_p: Any, generator: Any) -> None:
    if not isinstance(do_sample, bool):
        raise InvalidInput("do_sample", do_sample, "must be True or False")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 < temperature < math.inf
    ):
        raise InvalidInput("temperature", temperature, "must be a finite number > 0")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InvalidInput("top_k", top_k, "must be an int >= 1 or None")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1
    ):
        raise InvalidInput("top_p", top_p, "must be a number in (0, 1] or None")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InvalidInput("generator", type(generator).__name__, "must be a torch.Generator or None")
    if not do_sample:
        for name, value, default in (
            ("temperature", temperature, 1.0),
            ("top_k", top_k, None),
            ("top_p", top_p, None),
        ):
            if value != default:
                raise InvalidInput(name, value, "only sampling uses it: pass do_sample=True")


def sample_token(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``logits`` ``[B, V]``: softmax of ``logits / temperature`` restricted to the
    ``top_k`` largest and to the smallest most-likely set whose probability reaches ``top_p`` (the most
    likely token is always kept), sampled with ``generator``. Returns ``[B]`` int64."""
    z = logits.float() / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        ordered, order = torch.sort(z, dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        before = probs.cumsum(dim=-1) - probs
        drop = before >= top_p  # the probability of the tokens ranked above already reaches top_p
        z = z.scatter(-1, order, ordered.masked_fill(drop, -math.inf))
    probs = torch.softmax(z, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class GenerationOutput(NamedTuple):
    """``sequences`` ``[B, T + n]`` (prompt and new tokens), ``scores`` ``[B, n, V]`` (the logits each new token
    was chosen from), ``context`` (the memory context used, or None) and ``memory_writes`` (with
    ``remember=True``)."""

    sequences: torch.Tensor
    scores: torch.Tensor
    context: torch.Tensor | None
    memory_writes: list[MemoryWrite]


@dataclass
class _HookCall:
    """The hook's inputs and outputs for one backbone call."""

    state: StackState | None = None
    return_state: bool = False
    context: torch.Tensor | None = None
    read_memory: bool = False
    mask: torch.Tensor | None = None  # [B, T] bool of this call's tokens in a padded batch (True: a token)
    left_prefill: bool = False  # a left-padded prompt starting a stream: each row's tokens run alone
    output: StackOutput | None = None
    used_context: torch.Tensor | None = None
    layer_mean: torch.Tensor | None = None


def _cache_keyword(backbone: nn.Module) -> str:
    """``"cache"`` (transformers 5.x) or ``"past_key_values"`` (4.x): the forward's KV-cache argument."""
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    parameters = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _scatter_records(
    recorder: GlassBox, groups: list[tuple[torch.Tensor, int, GlassBox]], B: int, T: int
) -> None:
    """Put the records of row groups (rows ``index`` on their last ``n`` of ``T`` positions) into ``recorder`` as
    one batch: ``[B, T, …]`` with zeros at padded positions; the oscillator's bias becomes ``[B, T]`` (each row's
    own clock); the levels, the same for every group, once."""
    merged: dict[tuple[int, str], torch.Tensor] = {}
    for index, n, box in groups:
        for site, kind, value in box.records():
            if kind == "levels":
                merged.setdefault((site, kind), value[0])
                continue
            if kind == "oscillator":  # [n] for the group's shared clock
                value = value.expand(index.numel(), -1)
            full = merged.get((site, kind))
            if full is None:
                full = value.new_zeros((B, T, *value.shape[2:]))
                merged[(site, kind)] = full
            rows = index.to(full.device)
            full[rows[:, None], torch.arange(T - n, T, device=full.device)[None, :]] = value
    for (site, kind), value in merged.items():
        recorder.put(site, kind, value)


def _per_position(spans: list[tuple[int, torch.Tensor | None]], length: int) -> torch.Tensor | None:
    """The context of each position ``[B, length, D]`` from ``(first position, context [B, D])`` spans; the
    single context itself when there is one span; None when no span has one (zeros stand for a None span
    beside others)."""
    if len(spans) == 1:
        return spans[0][1]
    found = [c for _, c in spans if c is not None]
    if not found:
        return None
    like = found[0]
    out = like.new_zeros(like.shape[0], length, like.shape[-1])
    bounds = [start for start, _ in spans[1:]] + [length]
    for (start, context), end in zip(spans, bounds, strict=True):
        if context is not None:
            out[:, start:end] = context[:, None] if context.dim() == 2 else context
    return out


class UnifiedModel(nn.Module):
    """A ``Qwen2ForCausalLM`` with a :class:`~t4dm.spiking.CorticalStack` after decoder layer ``layer``.

    After that layer the hidden state ``h`` ``[B, T, hidden]`` becomes ``h + up(stack(down(h), context))``:
    ``down`` hidden→``d_stack`` and ``up`` ``d_stack``→hidden are bias-free linear maps, ``up`` starts at
    zero, so until it learns the model's logits are the backbone's exactly.

    Args:
        backbone: a ``Qwen2ForCausalLM`` (e.g. from :func:`~t4dm.qwen.load_backbone`).
        layer: index of the decoder layer the stack follows, in ``[0, num_hidden_layers)``.
        d_stack: the stack's width (default ``hidden // 2``: 1024 for Qwen2.5-3B).
        n_blocks: cortical blocks in the stack.
        n_heads: the stack's heads (default ``d_stack // 64``, at least 1).
        memory_dim: dimension of the T4DX memory vectors; None for a model without memory.
        freeze_backbone: set ``requires_grad=False`` on every backbone weight (QLoRA trains adapters).
        dtype: of the stack and the projections (float32; bfloat16 on a GPU). Stream state stays float32.
        stack_kwargs: further :class:`~t4dm.spiking.CorticalStack` / ``CorticalConfig`` keyword arguments.

    The new modules go to the device of the hooked layer's weights. ``memory_query`` (hidden→``memory_dim``)
    is a fixed random projection (``requires_grad=False``): stored keys stay comparable with later queries;
    ``memory_context`` (``memory_dim``→``d_stack``) turns retrieved vectors into the stack's context and trains.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        layer: int = DEFAULT_LAYER,
        d_stack: int | None = None,
        n_blocks: int = 6,
        n_heads: int | None = None,
        memory_dim: int | None = None,
        freeze_backbone: bool = True,
        dtype: torch.dtype = torch.float32,
        stack_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        layers = decoder_layers(backbone)
        n_layers = len(layers)
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise InvalidInput(
                "layer",
                layer,
                f"must be a decoder layer index in [0, {n_layers - 1}] (the model has {n_layers})",
            )
        hidden = int(backbone.config.hidden_size)
        d_stack = hidden // 2 if d_stack is None else d_stack
        if isinstance(d_stack, bool) or not isinstance(d_stack, int) or d_stack < 1:
            raise InvalidInput("d_stack", d_stack, "must be an int >= 1")
        n_heads = max(1, d_stack // 64) if n_heads is None else n_heads
        if memory_dim is not None and (
            isinstance(memory_dim, bool) or not isinstance(memory_dim, int) or memory_dim < 1
        ):
            raise InvalidInput("memory_dim", memory_dim, "must be an int >= 1 or None")
        self.spec: dict[str, Any] = {
            "layer": layer,
            "d_stack": d_stack,
            "n_blocks": n_blocks,
            "n_heads": n_heads,
            "memory_dim": memory_dim,
            "stack_kwargs": dict(stack_kwargs or {}),
        }
        self.lora: dict[str, Any] | None = None
        self.backbone = backbone
        self._requires_grad = [p.requires_grad for p in backbone.parameters()]
        if not getattr(backbone, "t4dm_inference_only", False):
            keep_nf4_layout(backbone)  # a 4-bit backbone must keep its weight layout to train (see there)
        if freeze_backbone:
            for p in backbone.parameters():
                p.requires_grad_(False)
        device = next(layers[layer].parameters()).device
        factory = {"device": device, "dtype": dtype}
        self.stack = CorticalStack(n_blocks, d_stack, n_heads, **self.spec["stack_kwargs"]).to(**factory)
        self.down = nn.Linear(hidden, d_stack, bias=False, **factory)
        self.up = nn.Linear(d_stack, hidden, bias=False, **factory)
        nn.init.zeros_(self.up.weight)
        self.memory_query: nn.Linear | None = None
        self.memory_context: nn.Linear | None = None
        if memory_dim is not None:
            self.memory_query = nn.Linear(hidden, memory_dim, bias=False, **factory)
            self.memory_query.weight.requires_grad_(False)
            self.memory_context = nn.Linear(memory_dim, d_stack, bias=False, **factory)
        self.memory: ModelMemory | None = None
        self._call: _HookCall | None = None
        self._decoder: StackDecoder | None = None  # generate()'s decoding steps, when it uses one
        self._decoders: dict[tuple[Any, ...], StackDecoder] = {}  # kept between generate() calls (graphs)
        self._cache_kw = _cache_keyword(backbone)
        self._hooked = (layers[layer],)  # a tuple: not registered as a submodule a second time
        self._hook = layers[layer].register_forward_hook(self._stack_hook, with_kwargs=True)

    # ------------------------------------------------------------------ structure
    @property
    def layer(self) -> int:
        return int(self.spec["layer"])

    @property
    def base_model(self) -> nn.Module:
        """The ``Qwen2ForCausalLM`` (inside the peft wrapper once :meth:`add_lora` ran)."""
        b = self.backbone
        return b.get_base_model() if hasattr(b, "get_base_model") else b

    def add_lora(self, **kwargs: Any) -> None:
        """Wrap the backbone with peft LoRA adapters (:func:`~t4dm.qwen.lora.lora_config` keyword arguments:
        ``r=16, alpha=32, target_modules=("q_proj", "v_proj"), dropout=0.05``).

        peft freezes every backbone weight except the adapters; the stack and the projections are not inside
        the backbone and keep their ``requires_grad``. A 4-bit backbone first goes through peft's
        ``prepare_model_for_kbit_training`` (norms in float32, input gradients on).
        """
        if self.lora is not None:
            raise InvalidInput("lora", self.lora, "this model already has LoRA adapters")
        config = lora_config(**kwargs)
        from peft import get_peft_model, prepare_model_for_kbit_training

        backbone = self.backbone
        if getattr(backbone, "is_loaded_in_4bit", False):
            backbone = prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=False)
        self.backbone = get_peft_model(backbone, config)
        self.lora = {
            "r": config.r,
            "alpha": config.lora_alpha,
            "target_modules": sorted(config.target_modules),
            "dropout": config.lora_dropout,
        }

    def release(self) -> nn.Module:
        """Take the stack out of the backbone and return the backbone as it was: the hook removed, LoRA
        adapters unloaded (peft's ``unload``: the base weights unchanged), ``requires_grad`` restored. This
        model is unusable afterwards."""
        self._hook.remove()
        backbone = self.backbone
        if self.lora is not None:
            backbone = backbone.unload()
            self.lora = None
        for p, flag in zip(backbone.parameters(), self._requires_grad, strict=True):
            p.requires_grad_(flag)
        return backbone

    def attach_memory(
        self,
        store: Any,
        *,
        k: int = 4,
        gate: WriteGate | None = None,
        kind: str = "episode",
        where: Mapping[str, Any] | None = None,
        kappa: tuple[float, float] | None = None,
    ) -> ModelMemory:
        """Read and write the T4DX ``store`` (its ``dim`` must be ``memory_dim``: else
        :class:`~t4dm.errors.DimensionMismatch`), within the scope ``where`` (e.g. ``{"user_id": "alice"}``)
        when given, reading only memories with κ in ``kappa`` when given; returns the
        :class:`~t4dm.qwen.memory.ModelMemory`."""
        if self.memory_query is None:
            raise InvalidInput("memory_dim", None, "this model was built without memory (pass memory_dim=)")
        self.memory = ModelMemory(
            store, self.spec["memory_dim"], k=k, gate=gate, kind=kind, where=where, kappa=kappa
        )
        return self.memory

    def detach_memory(self) -> None:
        self.memory = None

    @contextmanager
    def record(
        self,
        kinds: Iterable[str] = DEFAULT_KINDS,
        *,
        layers: Iterable[int] | None = None,
        to_cpu: bool = True,
    ) -> Iterator[GlassBox]:
        """Glass-box recording for the ``with`` body: the stack's blocks (spikes, gates, neuromodulator levels
        … see :mod:`t4dm.spiking.glassbox`) and, per decoder layer, the residual stream's per-token norm
        (``residual_norm``), the stream itself when ``"residual"`` is asked, and the norm of what the stack
        added (``stack_delta_norm``). ``layers`` limits the layers recorded (default: all). Records of the
        hooked layer are taken after the stack's contribution. Off (no hook) outside the ``with``::

            with model.record() as box:
                model.generate(ids, 8)
            box.get_layer(17, "residual_norm")      # [B, T + 8]
            box.save("run.npz")                     # for t4dm.viz.plot_glassbox
        """
        n_layers = len(decoder_layers(self.backbone))
        chosen = range(n_layers) if layers is None else list(layers)
        for i in chosen:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_layers:
                raise InvalidInput("layers", i, f"must be decoder layer indices in [0, {n_layers - 1}]")
        box = GlassBox(kinds, to_cpu=to_cpu)
        want_norm, want_full = box.wants("residual_norm"), box.wants("residual")
        handles = []
        if want_norm or want_full:
            modules = decoder_layers(self.backbone)
            for i in sorted(set(chosen)):

                def hook(module: nn.Module, args: Any, output: Any, i: int = i) -> None:
                    hidden = (output[0] if isinstance(output, tuple) else output).detach()
                    if want_norm:
                        box.put_layer(i, "residual_norm", hidden.float().norm(dim=-1))
                    if want_full:
                        box.put_layer(i, "residual", hidden)

                # registered after the stack's hook: the hooked layer is recorded with the stack's Δ added
                handles.append(modules[i].register_forward_hook(hook))
        try:
            with box.attach(self.stack):
                yield box
        finally:
            for handle in handles:
                handle.remove()

    def train(self, mode: bool = True) -> UnifiedModel:
        """``nn.Module.train``; refuses training mode for a 4-bit backbone whose weights bitsandbytes already
        repacked for CPU inference (it ran in eval mode before this model kept its layout): its layers
        would drop gradients (:func:`~t4dm.qwen.keep_nf4_layout`). Load it again (``load_backbone``)."""
        if mode and getattr(self.base_model, "is_loaded_in_4bit", False):
            repacked = repacked_nf4_layers(self.backbone)
            if repacked:
                raise InvalidInput(
                    "backbone",
                    repacked[:3],
                    f"{len(repacked)} 4-bit layers were repacked for CPU inference (a backbone loaded with "
                    "inference_only=True, or run in eval mode before this model was built) and cannot train; "
                    "load the backbone again with t4dm.qwen.load_backbone (inference_only=False)",
                )
        return super().train(mode)

    @contextmanager
    def mode(self, training: bool) -> Iterator[UnifiedModel]:
        """Train or eval mode for the ``with`` body, the model's own mode restored after it."""
        was_training = self.training
        self.train(training)
        try:
            yield self
        finally:
            self.train(was_training)

    def trainable_parameters(self) -> dict[str, int]:
        """Trainable parameter counts: ``lora``, ``stack``, ``projections`` (down, up, memory context)."""

        def count(module: nn.Module | None) -> int:
            return 0 if module is None else sum(p.numel() for p in module.parameters() if p.requires_grad)

        return {
            "lora": count(self.backbone),
            "stack": count(self.stack),
            "projections": count(self.down) + count(self.up) + count(self.memory_context),
        }

    # ------------------------------------------------------------------ forward
    def _stack_hook(self, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        call = self._call
        if call is None:
            # Called outside forward() (the backbone directly, or recomputed by gradient checkpointing): the
            # stack sees this call's tokens as a whole sequence with no state, which is only right when no
            # earlier tokens sit in the KV cache.
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if cache is not None and cache.get_seq_length() > hidden.shape[1]:
                raise NotImplementedError(
                    "decoding through the backbone directly (e.g. its own generate()): the stack's stream "
                    "state lives in UnifiedModel.forward / UnifiedModel.generate; use those"
                )
            call = _HookCall()
        h = hidden.to(self.down.weight.dtype)
        if call.mask is None:
            call.layer_mean = h.detach().float().mean(dim=1)
        else:  # a right-padded batch: each row's real tokens only
            weights = call.mask[:, :, None].float()
            call.layer_mean = (h.detach().float() * weights).sum(dim=1) / weights.sum(dim=1)
        context = self._read_memory(call.layer_mean) if call.read_memory else call.context
        call.used_context = context
        if call.left_prefill:
            assert call.mask is not None
            out = self._stack_by_length(self.down(h), context, call.mask, call.return_state)
        elif self._decoder is not None and call.state is self._decoder.state and h.shape[1] == 1:
            out = self._decoder(self.down(h), context)  # generate()'s decoding step: the stack in its buffers
        else:
            out = self.stack(self.down(h), context, state=call.state, return_state=call.return_state)
        call.output = out
        delta = self.up(out.hidden).to(hidden.dtype)
        rec = self.stack.recorder
        if rec is not None and rec.wants("stack_delta_norm"):
            rec.put_layer(self.layer, "stack_delta_norm", delta.detach().float().norm(dim=-1))
        new = hidden + delta
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def _stack_by_length(
        self, x: torch.Tensor, context: torch.Tensor | None, mask: torch.Tensor, return_state: bool
    ) -> StackOutput:
        """The stack on a left-padded batch ``x`` ``[B, T, d]`` at the start of a stream: the rows of each real
        length ``n`` run together on their last ``n`` positions, from no state, so every row gets what it gets
        alone (the padding never enters the stack). Padded positions get zeros (hidden, signals and glass-box
        records: each group records into its own box, scattered back into ``[B, T, …]`` rows); the state has
        a clock per row (its real length)."""
        recorder = self.stack.recorder
        recorded: list[tuple[torch.Tensor, int, GlassBox]] = []
        B, T, _ = x.shape
        lengths = mask.sum(dim=1).tolist()
        groups: dict[int, list[int]] = {}
        for b, n in enumerate(lengths):
            groups.setdefault(int(n), []).append(b)
        hidden = x.new_zeros(x.shape)
        signals: list[list[torch.Tensor]] | None = None
        states: list[StackState] = []
        order: list[int] = []
        for n, rows in groups.items():
            index = torch.tensor(rows, device=x.device)
            ctx = None if context is None else context.index_select(0, index.to(context.device))
            if ctx is not None and ctx.dim() == 3 and ctx.shape[1] == T:
                ctx = ctx[:, T - n :]
            if recorder is None:
                out = self.stack(x.index_select(0, index)[:, T - n :], ctx, return_state=return_state)
            else:
                box = GlassBox(recorder.kinds, to_cpu=recorder.to_cpu)
                with box.attach(self.stack):
                    out = self.stack(x.index_select(0, index)[:, T - n :], ctx, return_state=return_state)
                recorded.append((index, n, box))
            where = (index[:, None], torch.arange(T - n, T, device=x.device)[None, :])
            hidden = hidden.index_put(where, out.hidden)
            if signals is None:
                signals = [[x.new_zeros(B, T, dtype=torch.float32) for _ in s] for s in out.signals]
            for block, block_signals in enumerate(out.signals):
                for i, value in enumerate(block_signals):
                    signals[block][i] = signals[block][i].index_put(where, value.float())
            if out.state is not None:
                states.append(out.state)
            order += rows
        assert signals is not None
        if recorder is not None:
            _scatter_records(recorder, recorded, B, T)
        state = None
        if return_state:
            inverse = torch.empty(B, dtype=torch.long, device=x.device)
            inverse[torch.tensor(order, device=x.device)] = torch.arange(B, device=x.device)
            state = StackState.cat(states).rows(inverse)
        block_signals = tuple(type(out.signals[0])(*values) for values in signals)
        return StackOutput(hidden, state, block_signals)

    def memory_key(self, layer_mean: torch.Tensor) -> np.ndarray:
        """The memory vectors ``[B, memory_dim]`` float32 of layer states ``[B, hidden]``: queries and episodes
        share this projection."""
        if self.memory_query is None:
            raise InvalidInput("memory_dim", None, "this model was built without memory (pass memory_dim=)")
        with torch.no_grad():
            weight = self.memory_query.weight
            return self.memory_query(layer_mean.to(weight.device, weight.dtype)).float().cpu().numpy()

    def _read_memory(self, layer_mean: torch.Tensor) -> torch.Tensor | None:
        assert self.memory is not None and self.memory_context is not None
        retrieved, found = self.memory.read(self.memory_key(layer_mean))
        if not found.any():
            return None
        weight = self.memory_context.weight
        return self.memory_context(torch.from_numpy(retrieved).to(weight.device, weight.dtype))

    @staticmethod
    def _check_ids(
        input_ids: Any, attention_mask: Any, past: int = 0
    ) -> tuple[torch.Tensor | None, str | None]:
        """Check ``input_ids`` ``[B, T]`` and ``attention_mask`` ``[B, past + T]`` (``past``: tokens already in
        the KV cache). Returns the mask as bool (True: a token) and its padding side, ``"left"`` or
        ``"right"``; ``(None, None)`` when nothing is padded."""
        if (
            not isinstance(input_ids, torch.Tensor)
            or input_ids.dim() != 2
            or input_ids.dtype not in (torch.int64, torch.int32)
            or input_ids.shape[0] < 1
            or input_ids.shape[1] < 1
        ):
            what = (
                (tuple(input_ids.shape), str(input_ids.dtype))
                if isinstance(input_ids, torch.Tensor)
                else type(input_ids).__name__
            )
            raise InvalidInput("input_ids", what, "must be an integer tensor [B, T] with B, T >= 1")
        if attention_mask is None:
            return None, None
        expected = (input_ids.shape[0], past + input_ids.shape[1])
        if (
            not isinstance(attention_mask, torch.Tensor)
            or tuple(attention_mask.shape) != expected
            or attention_mask.is_floating_point()
            or attention_mask.is_complex()
            or not bool(((attention_mask == 0) | (attention_mask == 1)).all())
        ):
            what = (
                (tuple(attention_mask.shape), str(attention_mask.dtype))
                if isinstance(attention_mask, torch.Tensor)
                else type(attention_mask).__name__
            )
            where = f" (the {past} cached tokens and the ids)" if past else " (the ids' shape)"
            raise InvalidInput(
                "attention_mask", what, f"must be a 0/1 integer or bool tensor of shape {expected}{where}"
            )
        mask = attention_mask.to(torch.bool)
        if bool(mask.all()):
            return None, None
        lengths = mask.sum(dim=1)
        if bool((mask[:, past:].sum(dim=1) == 0).any()):
            raise InvalidInput("attention_mask", tuple(mask.shape), "every row needs at least one token")
        positions = torch.arange(mask.shape[1], device=mask.device)
        if torch.equal(mask, positions[None] >= mask.shape[1] - lengths[:, None]):
            return mask, "left"
        if torch.equal(mask, positions[None] < lengths[:, None]):
            return mask, "right"
        raise NotImplementedError(
            "gaps in attention_mask: the cortical stack runs through time, so each row's tokens must be "
            "contiguous, padded on the left (generation, streams) or on the right (whole sequences)"
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
        stack_state: StackState | None = None,
        return_stack_state: bool = False,
        context: torch.Tensor | None = None,
        read_memory: bool = True,
    ) -> UnifiedOutput:
        """Run ``input_ids`` ``[B, T]`` through the backbone with the stack in layer ``layer``'s output.

        A stream (decoding token by token) passes the previous call's ``cache`` and ``stack_state`` and
        ``context``. The memory is read (one SEARCH per sequence, queried with the layer state averaged over
        the chunk) when one is attached, ``read_memory`` is true and neither ``context`` nor ``stack_state``
        is given: i.e. at the start of a stream. ``labels`` ``[B, T]`` give the backbone's next-token loss
        (shifted inside; -100 ignored).

        ``attention_mask`` (1: token, 0: padding) covers the cached tokens and the ids, ``[B, past + T]``, and
        may pad rows of unequal length; every row's real positions get the logits (and loss) they get alone,
        padded positions' labels are ignored and the memory query averages real tokens only.

        - Right padding (each row's tokens, then padding): whole sequences (training, scoring), not streams.
        - Left padding (padding, then each row's tokens): also streams, as in generation. At the start of a
          stream the rows of each real length run through the stack together, from no state; the returned
          state keeps a clock per row, and later calls pass the growing mask with only real new tokens.
        """
        past = 0 if cache is None else int(cache.get_seq_length())
        full_mask, side = self._check_ids(input_ids, attention_mask, past)
        mask = None if full_mask is None else full_mask[:, past:]  # this call's tokens
        stream = use_cache or cache is not None or stack_state is not None or return_stack_state
        left_prefill = False
        if side == "right" and stream:
            raise NotImplementedError(
                "a right-padded batch as part of a stream (cache / stack state): the padding would enter the "
                "stack's state; pad streams on the left, or run padded batches whole (training, scoring)"
            )
        if side == "left" and mask is not None and not bool(mask.all()):
            if past or stack_state is not None:
                raise NotImplementedError(
                    "padding inside a stream: only the start of a stream (no cache, no stack state) may be "
                    "padded, on the left; later calls pass real tokens and the grown mask"
                )
            left_prefill = True
        if mask is not None and bool(mask.all()):
            mask = None  # this call's tokens are all real: the stack runs as usual (the cache holds the pads)
        checkpointing = getattr(self._hooked[0], "gradient_checkpointing", False)
        if self.training and torch.is_grad_enabled() and checkpointing:
            raise NotImplementedError(
                "activation (gradient) checkpointing: the recomputed decoder layer would run the stack again "
                "without its state and context; disable it (activation_checkpointing_disable(), named "
                "gradient_checkpointing_disable() in older transformers)"
            )
        call = _HookCall(
            state=stack_state,
            return_state=return_stack_state,
            context=context,
            read_memory=bool(
                read_memory and self.memory is not None and context is None and stack_state is None
            ),
            mask=mask,
            left_prefill=left_prefill,
        )
        kwargs: dict[str, Any] = {"use_cache": use_cache}
        if cache is not None:
            kwargs[self._cache_kw] = cache
        if full_mask is not None:
            kwargs["attention_mask"] = full_mask.long()
            if side == "left":  # each row's positions count its own tokens (rotary positions as alone)
                kwargs["position_ids"] = (full_mask.long().cumsum(dim=1) - 1).clamp(min=0)[:, past:]
        if mask is not None and labels is not None:
            # a target counts when it and the token it is predicted from are real (left padding: the first
            # real token is predicted from a pad)
            keep = mask.clone()
            keep[:, 1:] &= mask[:, :-1]
            labels = labels.masked_fill(~keep.to(labels.device), -100)
        if labels is not None:
            kwargs["labels"] = labels
        self._call = call
        try:
            out = self.backbone(input_ids=input_ids, **kwargs)
        finally:
            self._call = None
        if call.output is None or call.layer_mean is None:
            raise RuntimeError(f"the stack's hook on decoder layer {self.layer} did not run")
        new_cache = getattr(out, self._cache_kw, None) if use_cache else None
        return UnifiedOutput(
            logits=out.logits,
            loss=getattr(out, "loss", None),
            cache=new_cache,
            stack_state=call.output.state,
            signals=call.output.signals,
            context=call.used_context,
            layer_mean=call.layer_mean,
        )

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 16,
        *,
        use_cache: bool = True,
        eos_token_id: int | None = None,
        read_memory: bool = True,
        reread_every: int | None = None,
        remember: bool = False,
        reward: float = 0.0,
        modulate: bool = False,
        attention_mask: torch.Tensor | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        stack_graph: bool | None = None,
    ) -> GenerationOutput:
        """Decoding token by token in eval mode: greedy, or sampled with ``do_sample=True``.

        Sampling (:func:`sample_token`) divides the logits by ``temperature``, keeps the ``top_k`` most likely
        tokens and the smallest set whose probability reaches ``top_p`` (nucleus), and draws from what is
        left with ``generator`` (a ``torch.Generator`` on the model's device: the same seed, the same tokens).
        ``scores`` are the raw logits either way.

        With ``use_cache`` the prompt runs once and each new token runs alone with the KV cache and the
        stack's stream state; without it every step recomputes the whole sequence (the reference the cached
        path is tested against). The memory is read from the prompt and its context kept for the new tokens;
        with ``reread_every=n`` it is read again after every ``n`` new tokens, queried with the hooked layer's
        state averaged over the whole sequence so far, and the new context applies from the next token on
        (earlier tokens keep theirs: the uncached path gets the same contexts per position). When one read
        finds memories and another finds none, the uncached path stands a zero context for "none".
        A row that produced ``eos_token_id`` keeps producing it. ``remember=True`` offers the whole sequence
        to the memory afterwards (:meth:`remember`, with ``reward`` and ``modulate``).

        Prompts of unequal length are padded on the left with ``attention_mask`` ``[B, T]`` (1: token): each
        row generates what it generates alone (its memory query, positions and oscillator clock are its own).

        ``stack_graph``: run the stack's decoding steps through a :class:`~t4dm.spiking.StackDecoder` (its state
        in fixed buffers, the whole six-block step one CUDA graph replay on CUDA, instead of ~900 kernel
        launches a token). None (default): on CUDA; True: also elsewhere (the buffers run eagerly: the same
        results); False: plain stack calls. Only with ``use_cache``.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InvalidInput("max_new_tokens", max_new_tokens, "must be an int >= 1")
        _check_sampling(do_sample, temperature, top_k, top_p, generator)
        if reread_every is not None and (
            isinstance(reread_every, bool) or not isinstance(reread_every, int) or reread_every < 1
        ):
            raise InvalidInput("reread_every", reread_every, "must be an int >= 1 or None")
        rereading = reread_every is not None and read_memory and self.memory is not None
        if remember and self.memory is None:
            raise InvalidInput("remember", remember, "no memory attached (attach_memory first)")
        mask, side = self._check_ids(input_ids, attention_mask)
        if side == "right":
            raise NotImplementedError(
                "right-padded prompts: generation appends tokens after the padding; pad prompts on the left"
            )
        B = input_ids.shape[0]
        # real tokens per row (its own count of tokens whose layer state the model computed)
        real = (
            mask.sum(dim=1, keepdim=True).float()
            if mask is not None
            else torch.full((B, 1), float(input_ids.shape[1]), device=input_ids.device)
        )
        if stack_graph is not None and not isinstance(stack_graph, bool):
            raise InvalidInput("stack_graph", stack_graph, "expected True, False or None")
        with self.mode(False):
            out = self.forward(
                input_ids,
                attention_mask=mask,
                use_cache=use_cache,
                return_stack_state=use_cache,
                read_memory=read_memory,
            )
            context = out.context
            decoder = None
            if use_cache and (stack_graph or (stack_graph is None and input_ids.device.type == "cuda")):
                decoder = self._stack_decoder(out.stack_state, context is not None)
            stack_state = decoder.state if decoder is not None else out.stack_state
            # contexts in force, as (first position, context): the uncached path rebuilds them per position
            spans: list[tuple[int, torch.Tensor | None]] = [(0, context)]
            # the hooked layer's state summed over each row's tokens
            state_sum = out.layer_mean * real.to(out.layer_mean.device)
            sequences = input_ids
            finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            scores = []
            for step in range(max_new_tokens):
                logits = out.logits[:, -1].float()
                scores.append(logits)
                if do_sample:
                    token = sample_token(
                        logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
                    )
                else:
                    token = logits.argmax(dim=-1)
                if eos_token_id is not None:
                    token = torch.where(finished, torch.full_like(token, eos_token_id), token)
                    finished |= token == eos_token_id
                sequences = torch.cat([sequences, token[:, None].to(sequences.dtype)], dim=1)
                if mask is not None:
                    mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
                # (without an eos token nothing finishes early: no host sync, the next step is queued at once)
                if step == max_new_tokens - 1 or (eos_token_id is not None and bool(finished.all())):
                    break
                if rereading and (step + 1) % reread_every == 0:  # type: ignore[operator]
                    seen = (real + step).to(state_sum.device)  # tokens whose layer state the model computed
                    context = self._read_memory(state_sum / seen)
                    spans.append((sequences.shape[1] - 1, context))
                if use_cache:
                    self._decoder = decoder
                    try:
                        out = self.forward(
                            token[:, None].to(input_ids.dtype),
                            attention_mask=mask,
                            cache=out.cache,
                            use_cache=True,
                            stack_state=stack_state,
                            return_stack_state=True,
                            context=context,
                            read_memory=False,
                        )
                    finally:
                        self._decoder = None
                    stack_state = out.stack_state
                    state_sum = state_sum + out.layer_mean
                else:
                    out = self.forward(
                        sequences,
                        attention_mask=mask,
                        context=_per_position(spans, sequences.shape[1]),
                        read_memory=False,
                    )
                    state_sum = out.layer_mean * (real + step + 1).to(out.layer_mean.device)
        writes = (
            self.remember(sequences, reward=reward, modulate=modulate, attention_mask=mask)
            if remember
            else []
        )
        return GenerationOutput(sequences, torch.stack(scores, dim=1), context, writes)

    def _stack_decoder(self, state: StackState, context: bool) -> StackDecoder:
        """A :class:`StackDecoder` starting from ``state``: the one kept for these shapes when it still fits (its
        CUDA graph reused: capturing costs two warm-up steps), else a new one."""
        dtype = self.down.weight.dtype
        key = (tuple(state.blocks[0].membrane.shape), tuple(state.clock.shape), context, dtype)
        decoder = self._decoders.get(key)
        if decoder is not None and decoder.fits(state, context, dtype):
            decoder.load(state)
            return decoder
        decoder = StackDecoder(
            self.stack, state, context=context, dtype=dtype, graph=state.clock.device.type == "cuda"
        )
        self._decoders[key] = decoder
        return decoder

    # ------------------------------------------------------------------ memory writes
    @torch.no_grad()
    def remember(
        self,
        input_ids: torch.Tensor,
        *,
        reward: float = 0.0,
        fields: dict[str, Any] | None = None,
        modulate: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> list[MemoryWrite]:
        """Offer each sequence of ``input_ids`` ``[B, T]`` (at least 2 tokens) to the memory as one episode.

        The episode vector is the memory key of the hooked layer's state averaged over the sequence; the
        gate's surprise ε is the sequence's mean next-token loss in nats under this model (memory read as
        usual), novelty the cosine distance to the nearest stored episode. Stored items are INSERTed with
        κ = 0 and the gate's inputs in their fields. ``attention_mask`` pads rows of unequal length (left
        or right, as :meth:`forward`): each row's episode is its real tokens'.

        ``modulate=True`` also feeds the episode to the stack's neuromodulator bus
        (:meth:`~t4dm.spiking.NeuromodBus.observe`): ``reward`` (dopamine as its prediction error, serotonin),
        the batch's mean novelty (acetylcholine) and mean loss as the prediction error (norepinephrine). The
        bus has one level per block for the whole batch, so the signals are the episode's, after it: the
        levels change what the stack does from the next call on.
        """
        if self.memory is None:
            raise InvalidInput("memory", None, "no memory attached (attach_memory first)")
        if not isinstance(modulate, bool):
            raise InvalidInput("modulate", modulate, "must be True or False")
        mask, _ = self._check_ids(input_ids, attention_mask)
        if mask is None:
            mask = torch.ones_like(input_ids, dtype=torch.bool)
        lengths = mask.sum(dim=1)
        if bool((lengths < 2).any()):
            raise InvalidInput("input_ids", tuple(input_ids.shape), "an episode needs T >= 2 tokens (a loss)")
        with self.mode(False):
            out = self.forward(input_ids, attention_mask=None if bool(mask.all()) else mask)
        token_losses = nn.functional.cross_entropy(
            out.logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:].long(), reduction="none"
        )
        targets = (mask[:, 1:] & mask[:, :-1]).to(token_losses.device)  # real tokens predicted from real ones
        losses = (token_losses * targets).sum(dim=1) / targets.sum(dim=1)
        keys = self.memory_key(out.layer_mean)
        writes = []
        for b in range(input_ids.shape[0]):
            extra = {"tokens": int(lengths[b])}
            extra.update(fields or {})
            writes.append(self.memory.write(keys[b], surprise=float(losses[b]), reward=reward, fields=extra))
        if modulate:
            self.stack.bus.observe(
                reward=float(reward),
                novelty=sum(w.decision.novelty for w in writes) / len(writes),
                prediction_error=float(losses.mean()),
            )
        return writes
