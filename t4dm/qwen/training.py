"""Training the unified model: phase 1 (backprop) and phase 2 (local three-factor rule).

Phase 1 — surrogate-gradient backprop through the stack plus LoRA on a next-token loss: AdamW on the
trainable tensors only (LoRA A/B, the stack, ``down``, ``up``, ``memory_context``), gradient clipping,
bfloat16 autocast on a CUDA device that supports it (off on the CPU), a tqdm progress bar, checkpoints
every ``checkpoint_every`` steps and at the end.

Phase 2 — no backprop at all (everything runs under ``torch.no_grad``): each step runs a batch with a
:class:`~t4dm.spiking.GlassBox` recording the spikes, turns the change of the batch's token loss into a
reward for the neuromodulator bus (``bus.observe(reward=previous_loss − loss)``: dopamine is
``tanh(r − V)``, the reward prediction error against the bus's expected reward ``V``) and applies the
:class:`~t4dm.learning.ThreeFactor` rule (STDP eligibility × dopamine) to the chosen blocks' plastic weight
(``attention.qk_proj``) with :func:`~t4dm.learning.apply_plasticity_`. Or, with
``rule=NodePerturbation(...)``, node perturbation on one linear layer outside the backbone (``target``: a
module path such as ``"up"`` or ``"stack.blocks.1.out_proj"``; default ``"up"``): each step runs the batch
twice with opposite noise on the layer's output and moves its weight along noise × input × the loss
difference, a three-factor rule whose expected update is the negative gradient (the recorded loss is the
mean of the two passes, the recorded dopamine the reward prediction error).

Data are token ids: a 1-D integer array or tensor, a ``.npy`` file of one, or a text file with a
``tokenizer`` (``"bytes"`` for UTF-8 bytes as ids 0‥255, an object with ``encode(text)``, or a callable).
Each step takes ``batch_size`` windows of ``seq_len`` tokens at offsets drawn from ``(seed, step)``; the
torch RNG (LoRA dropout) is seeded from ``(seed, step)`` too, inside ``torch.random.fork_rng`` (the caller's
RNG is left alone). So a step depends only on the weights, the optimizer state and its number, and a run
resumed from a checkpoint continues exactly as the uninterrupted run (tested on the CPU).

A training checkpoint is a folder ``<out>/step-<8 digits>/`` holding what
:func:`~t4dm.qwen.save_checkpoint` writes (LoRA, the stack with its neuromodulator levels, the
projections), ``optimizer.pt`` (phase 1: AdamW's state and the parameter names it belongs to) and, written
last, ``train.json`` (format, phase, step, the options, the loss of every step so far, the T4DX store the
model read — its path and ``last_seq`` — when memory is attached). A folder without ``train.json`` is not a
complete checkpoint; :func:`latest_checkpoint` skips it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from t4dm.errors import InvalidInput

from .checkpoint import _SPEC, _TENSORS, _own_modules, save_checkpoint
from .unified import UnifiedModel

__all__ = [
    "LR_SCHEDULES",
    "PHASES",
    "TRAIN_FORMAT",
    "TrainResult",
    "batch_at",
    "latest_checkpoint",
    "learning_rate",
    "load_tokens",
    "train",
]

PHASES = (1, 2)
#: Values of ``train(..., lr_schedule=)``.
LR_SCHEDULES = ("constant", "cosine")
#: Where the cosine schedule ends, as a fraction of ``lr``.
COSINE_FLOOR = 0.1
#: Version of ``train.json``.
TRAIN_FORMAT = 1
_TRAIN = "train.json"
_OPTIMIZER = "optimizer.pt"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``losses[i]`` is the mean next-token loss (nats) of step ``i + 1``'s batch, for every step from the
    first (a resumed run includes the steps before the checkpoint); phase 1 computes it before that step's
    update, phase 2 likewise. ``grad_norms`` (phase 1: the total gradient norm before clipping) or
    ``dopamine`` (phase 2: the bus's dopamine, averaged over the updated blocks) per step, aligned with
    ``losses``. ``lrs``: phase 1's learning rate of every step (the schedule). ``val_losses``: ``(step,
    mean loss on the validation batches)`` after each validation. ``checkpoints``: the folders written by
    this call.
    """

    phase: int
    step: int
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    dopamine: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- data
def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidInput(name, value, f"must be an int >= {low}")
    return int(value)


def _check_float(name: str, value: Any, low: float, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not np.isfinite(value)
        or value < low
    ):
        raise InvalidInput(
            name, value, f"must be a finite number >= {low}" + (" or None" if allow_none else "")
        )
    return float(value)


def _encode_text(path: str, tokenizer: Any) -> np.ndarray:
    if tokenizer is None:
        raise InvalidInput(
            "tokenizer",
            None,
            f"data {path!r} is a text file: pass a tokenizer ('bytes', .encode or a callable)",
        )
    if isinstance(tokenizer, str) and tokenizer == "bytes":
        with open(path, "rb") as f:
            return np.frombuffer(f.read(), dtype=np.uint8).astype(np.int64)
    from .embedder import encode_text

    with open(path, encoding="utf-8") as f:
        return np.asarray(encode_text(f.read(), tokenizer), dtype=np.int64)


def load_tokens(
    data: Any, *, tokenizer: Any = None, vocab_size: int | None = None, seq_len: int = 1
) -> np.ndarray:
    """The token ids of ``data``: a 1-D integer array (one stream) or a 2-D one ``[N, L]`` (N sequences);
    a ``.npy`` file is memory-mapped.

    ``data``: an integer ``np.ndarray`` or ``torch.Tensor``, a path to a ``.npy`` file of one, or a path to a
    text file encoded with ``tokenizer``. Raises :class:`~t4dm.errors.InvalidInput` naming ``data`` for a
    missing file, ids that are not a 1-D or 2-D integer array, ids outside ``[0, vocab_size)``, or fewer
    than ``seq_len`` tokens (per row); naming ``tokenizer`` for a text file without a usable one.
    """
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.isfile(path):
            raise InvalidInput("data", path, "no such file")
        if path.endswith(".npy"):
            try:
                ids = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                raise InvalidInput("data", path, f"not a readable .npy array: {exc}") from exc
        else:
            ids = _encode_text(path, tokenizer)
        where: Any = path
    elif isinstance(data, torch.Tensor):
        ids, where = data.detach().cpu().numpy(), f"<tensor {tuple(data.shape)}>"
    elif isinstance(data, np.ndarray):
        ids, where = data, f"<array {data.shape}>"
    else:
        raise InvalidInput(
            "data", type(data).__name__, "expected token ids (array, tensor, .npy) or a text file"
        )
    if ids.ndim not in (1, 2) or not np.issubdtype(ids.dtype, np.integer) or ids.size == 0:
        raise InvalidInput(
            "data",
            where,
            f"token ids must be a non-empty 1-D or 2-D integer array, got {ids.dtype} {ids.shape}",
        )
    if ids.shape[-1] < seq_len:
        what = "tokens" if ids.ndim == 1 else "tokens per row"
        raise InvalidInput(
            "data", where, f"{ids.shape[-1]} {what}: shorter than one sequence (seq_len={seq_len})"
        )
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        raise InvalidInput("data", where, f"token ids span [{low}, {high}], outside [0, {vocab_size})")
    return ids


def _step_seed(seed: int, step: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def batch_at(ids: np.ndarray, step: int, *, batch_size: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """Step ``step``'s batch ``[batch_size, seq_len]`` int64, drawn from ``(seed, step)`` alone (a resumed
    run sees the same batches): windows of a 1-D stream ``ids`` at random offsets, or the first ``seq_len``
    tokens of random rows of a 2-D ``ids`` ``[N, L]`` (one sequence per row)."""
    rng = np.random.default_rng(_step_seed(seed, step, 0))
    if ids.ndim == 2:
        rows = rng.integers(0, ids.shape[0], size=batch_size)
        return torch.from_numpy(np.asarray(ids[rows, :seq_len], dtype=np.int64))
    starts = rng.integers(0, ids.shape[0] - seq_len + 1, size=batch_size)
    return torch.from_numpy(np.stack([np.asarray(ids[s : s + seq_len], dtype=np.int64) for s in starts]))


@contextlib.contextmanager
def _seeded_rng(seed: int, step: int, device: torch.device) -> Iterator[None]:
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_step_seed(seed, step, 1))
        yield


# ---------------------------------------------------------------------------------------------- checkpoints
def _is_complete(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, name)) for name in (_TRAIN, _SPEC, _TENSORS))


def latest_checkpoint(path: str | os.PathLike[str]) -> str:
    """The checkpoint to resume from: ``path`` itself when it is a complete training checkpoint, else its
    ``step-<n>`` subfolder with the highest ``n`` that is complete. :class:`~t4dm.errors.InvalidInput` naming
    ``resume`` when there is none."""
    folder = os.fspath(path)
    if _is_complete(folder):
        return folder
    if os.path.isdir(folder):
        steps = sorted((int(m.group(1)), name) for name in os.listdir(folder) if (m := _STEP_DIR.match(name)))
        for _, name in reversed(steps):
            if _is_complete(os.path.join(folder, name)):
                return os.path.join(folder, name)
    raise InvalidInput("resume", folder, f"holds no complete training checkpoint ({_TRAIN} + model files)")


def _json_normal(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _load_weights_into(model: UnifiedModel, folder: str) -> None:
    """Copy the checkpoint's LoRA, stack and projection tensors into ``model`` in place (strict)."""
    from safetensors.torch import load_file

    with open(os.path.join(folder, _SPEC), encoding="utf-8") as f:
        spec = json.load(f)
    if spec.get("model") != _json_normal(model.spec) or spec.get("lora") != _json_normal(model.lora):
        raise InvalidInput(
            "resume",
            folder,
            f"saved for another model (shape {spec.get('model')}, LoRA {spec.get('lora')}; this model: "
            f"{model.spec}, LoRA {model.lora})",
        )
    tensors = load_file(os.path.join(folder, _TENSORS))
    with torch.no_grad():
        if model.lora is not None:
            from peft import set_peft_model_state_dict

            lora = {k.removeprefix("lora/"): v for k, v in tensors.items() if k.startswith("lora/")}
            result = set_peft_model_state_dict(model.backbone, lora)
            if getattr(result, "unexpected_keys", None):
                raise InvalidInput("resume", folder, f"unexpected LoRA keys {result.unexpected_keys[:3]}")
        for module_name, module in _own_modules(model).items():
            prefix = f"own/{module_name}."
            own = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
            module.load_state_dict(own, strict=True)


def _memory_note(model: UnifiedModel) -> dict[str, Any] | None:
    """The T4DX store the model reads: its path and ``last_seq`` (the snapshot it ran with)."""
    if model.memory is None:
        return None
    store = model.memory.store
    note: dict[str, Any] = {
        "path": getattr(store, "path", None),
        "kind": model.memory.kind,
        "k": model.memory.k,
    }
    stats = getattr(store, "stats", None)
    if callable(stats):
        note["last_seq"] = int(stats()["last_seq"])
    return note


def _save(
    model: UnifiedModel,
    out: str,
    step: int,
    options: dict[str, Any],
    result: TrainResult,
    optimizer: torch.optim.Optimizer | None,
    names: list[str],
) -> str:
    from t4dm.storage.fsutil import publish_bytes

    folder = os.path.join(out, f"step-{step:08d}")
    save_checkpoint(model, folder)
    if optimizer is not None:
        buffer = io.BytesIO()
        torch.save({"optimizer": optimizer.state_dict(), "names": names}, buffer)
        publish_bytes(os.path.join(folder, _OPTIMIZER), buffer.getvalue())
    state = {
        "format": TRAIN_FORMAT,
        "phase": result.phase,
        "step": step,
        "options": options,
        "losses": result.losses,
        "grad_norms": result.grad_norms,
        "dopamine": result.dopamine,
        "lrs": result.lrs,
        "val_losses": result.val_losses,
        "memory": _memory_note(model),
    }
    publish_bytes(
        os.path.join(folder, _TRAIN), json.dumps(state, indent=1).encode()
    )  # last: marks it complete
    return folder


# ---------------------------------------------------------------------------------------------- train
def _perturbed_layer(model: UnifiedModel, target: Any) -> nn.Linear:
    """The linear layer ``target`` (a module path) of the stack or the projections, for node perturbation."""
    if not isinstance(target, str) or target.split(".")[0] not in ("up", "down", "memory_context", "stack"):
        raise InvalidInput(
            "target", target, "node perturbation needs a linear layer outside the backbone: 'up', 'down', "
            "'memory_context' or one inside 'stack' (e.g. 'stack.blocks.0.out_proj')"
        )  # fmt: skip
    try:
        layer = model.get_submodule(target)
    except AttributeError as exc:
        raise InvalidInput("target", target, f"no such module ({exc})") from exc
    if not isinstance(layer, nn.Linear):
        raise InvalidInput("target", target, f"is a {type(layer).__name__}, not a torch.nn.Linear")
    return layer


def _check_blocks(model: UnifiedModel, blocks: Sequence[int] | None) -> tuple[int, ...]:
    n = model.stack.n_blocks
    if blocks is None:
        return tuple(range(n))
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or not blocks:
        raise InvalidInput("blocks", blocks, f"must be a non-empty sequence of block indices in [0, {n})")
    for b in blocks:
        if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < n:
            raise InvalidInput("blocks", list(blocks), f"block indices must be ints in [0, {n})")
    if len(set(blocks)) != len(blocks):
        raise InvalidInput("blocks", list(blocks), "repeats a block")
    return tuple(blocks)


def train(
    model: UnifiedModel,
    data: Any,
    *,
    phase: int = 1,
    steps: int = 100,
    seq_len: int = 64,
    batch_size: int = 8,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    mixed_precision: bool | None = None,
    out: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: str | os.PathLike[str] | None = None,
    seed: int = 0,
    tokenizer: Any = None,
    blocks: Sequence[int] | None = None,
    rule: Any = None,
    dopamine: float | None = None,
    target: str | None = None,
    warmup_steps: int = 0,
    lr_schedule: str = "constant",
    val_data: Any = None,
    val_every: int | None = None,
    val_batches: int = 4,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on the token ids of ``data`` until step ``steps`` (see the module docstring).

    Args:
        model: a :class:`~t4dm.qwen.UnifiedModel` (phase 1 trains whatever requires a gradient: call
            :meth:`~t4dm.qwen.UnifiedModel.add_lora` first for LoRA).
        data: token ids or a file (:func:`load_tokens`); ``tokenizer`` for a text file.
        phase: 1 (backprop + LoRA) or 2 (three-factor rule, no backprop).
        steps: the step to train up to (a resumed run continues from the checkpoint's step).
        seq_len, batch_size: each step's batch ``[batch_size, seq_len]``.
        lr, weight_decay, grad_clip: phase 1's AdamW and total-norm clipping (``None``: no clipping).
        mixed_precision: bfloat16 autocast; ``None`` = on a CUDA device with bfloat16, off elsewhere.
        out: checkpoint folder (``out/step-<n>``); written every ``checkpoint_every`` steps and at the end.
        resume: a checkpoint folder (or an ``out`` folder: its latest complete checkpoint) to continue from:
            the model's trained tensors and buffers, the optimizer and the loss history are restored.
        seed: the data order and the per-step torch RNG derive from ``(seed, step)``.
        blocks, rule, dopamine, target: phase 2: the stack blocks whose ``target`` weight learns (default
            all; default target ``attention.qk_proj``), the rule (default ``ThreeFactor()``; or a
            :class:`~t4dm.learning.NodePerturbation` on the layer ``target``, default ``"up"``, without
            ``blocks``), and a fixed dopamine level instead of the reward signal (``None``: from the loss
            change through the bus; for node perturbation a gain on the update, default 1).
        warmup_steps, lr_schedule: phase 1's learning rate per step (:func:`learning_rate`): a linear
            warm-up over the first ``warmup_steps`` steps, then ``"constant"`` or ``"cosine"`` (down to
            ``COSINE_FLOOR`` × ``lr`` at step ``steps``).
        val_data, val_every, val_batches: held-out token ids (as ``data``); every ``val_every`` steps and
            after the last, the mean next-token loss of ``val_batches`` fixed batches of them, in eval mode
            without gradients (``val_every=None``: after the last step only). Validation draws no random
            numbers from the training's streams: a run with it trains exactly as a run without.
        progress: show a tqdm progress bar.

    Raises:
        InvalidInput: naming the field: ``phase`` not 1 or 2, ``steps`` / ``seq_len`` / ``batch_size`` /
            ``checkpoint_every`` < 1, ``lr`` / ``weight_decay`` / ``grad_clip`` negative, ``data`` missing,
            not integer ids, out of the vocabulary or shorter than ``seq_len``, ``mixed_precision=True``
            without CUDA, ``checkpoint_every`` without ``out``, ``resume`` with no checkpoint, of another
            phase or model, ``steps`` below the checkpoint's step, ``blocks`` / ``dopamine`` / ``rule`` bad,
            ``warmup_steps`` < 0, an unknown ``lr_schedule``, ``val_every`` without ``val_data`` or < 1,
            ``val_batches`` < 1, ``val_data`` bad as ``data`` is.
    """
    if phase not in PHASES or isinstance(phase, bool):
        raise InvalidInput("phase", phase, f"expected one of {PHASES}")
    if not isinstance(model, UnifiedModel):
        raise InvalidInput("model", type(model).__name__, "expected a UnifiedModel")
    steps = _check_int("steps", steps, 1)
    seq_len = _check_int("seq_len", seq_len, 2)
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    lr = _check_float("lr", lr, 0.0)
    weight_decay = _check_float("weight_decay", weight_decay, 0.0)
    grad_clip = _check_float("grad_clip", grad_clip, 0.0, allow_none=True)
    if checkpoint_every is not None:
        checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 1)
        if out is None:
            raise InvalidInput("checkpoint_every", checkpoint_every, "needs out= (a checkpoint folder)")
    device = model.down.weight.device
    if mixed_precision is None:
        mixed_precision = device.type == "cuda" and torch.cuda.is_bf16_supported()
    elif mixed_precision is True and device.type != "cuda":
        raise InvalidInput(
            "mixed_precision", True, f"bfloat16 autocast needs a CUDA device (model on {device})"
        )
    elif not isinstance(mixed_precision, bool):
        raise InvalidInput("mixed_precision", mixed_precision, "must be True, False or None (automatic)")
    warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
    if lr_schedule not in LR_SCHEDULES:
        raise InvalidInput("lr_schedule", lr_schedule, f"expected one of {LR_SCHEDULES}")
    val_batches = _check_int("val_batches", val_batches, 1)
    if val_every is not None:
        val_every = _check_int("val_every", val_every, 1)
        if val_data is None:
            raise InvalidInput("val_every", val_every, "needs val_data= (held-out token ids)")
    vocab = int(model.base_model.config.vocab_size)
    ids = load_tokens(data, tokenizer=tokenizer, vocab_size=vocab, seq_len=seq_len)
    val_ids = None
    if val_data is not None:
        try:
            val_ids = load_tokens(val_data, tokenizer=tokenizer, vocab_size=vocab, seq_len=seq_len)
        except InvalidInput as exc:
            raise InvalidInput("val_data", exc.value, exc.reason) from exc

    rule_spec: dict[str, Any] | None = None
    if phase == 2:
        from t4dm.learning import PLASTIC_TARGETS, NodePerturbation, ThreeFactor

        rule = ThreeFactor() if rule is None else rule
        if isinstance(rule, NodePerturbation):
            target = "up" if target is None else target
            _perturbed_layer(model, target)
            if blocks is not None:
                raise InvalidInput(
                    "blocks", blocks, "node perturbation trains one layer (target=), not blocks"
                )
        elif isinstance(rule, ThreeFactor):
            target = "attention.qk_proj" if target is None else target
            if target not in PLASTIC_TARGETS:
                raise InvalidInput("target", target, f"must be one of {sorted(PLASTIC_TARGETS)}")
            blocks = _check_blocks(model, blocks)
        else:
            raise InvalidInput(
                "rule",
                type(rule).__name__,
                "phase 2 needs a t4dm.learning.ThreeFactor or NodePerturbation rule",
            )
        if dopamine is not None:
            _check_float("dopamine", dopamine, -1.0)
            if dopamine > 1.0:
                raise InvalidInput("dopamine", dopamine, "must lie in [-1, 1]")
        rule_spec = {"kind": type(rule).__name__, **asdict(rule)}

    options: dict[str, Any] = {
        "steps": steps, "seq_len": seq_len, "batch_size": batch_size, "seed": seed, "lr": lr,
        "weight_decay": weight_decay, "grad_clip": grad_clip, "mixed_precision": mixed_precision,
        "blocks": None if blocks is None else list(blocks), "dopamine": dopamine, "target": target,
        "rule": rule_spec, "data": _data_path(data), "warmup_steps": warmup_steps, "lr_schedule": lr_schedule,
        "val_data": _data_path(val_data), "val_every": val_every, "val_batches": val_batches,
    }  # fmt: skip
    result = TrainResult(phase=phase, step=0)
    out_dir = None if out is None else os.fspath(out)

    resume_from = None if resume is None else latest_checkpoint(resume)
    trainable, saved_optimizer = [], None
    if phase == 1:
        trainable, saved_optimizer = _phase1_tensors(model, out_dir, resume_from, device)
    if resume_from is not None:
        with open(os.path.join(resume_from, _TRAIN), encoding="utf-8") as f:
            state = json.load(f)
        if state.get("format") != TRAIN_FORMAT:
            raise InvalidInput(
                "resume", resume_from, f"train.json format {state.get('format')!r}, expected {TRAIN_FORMAT}"
            )
        if state["phase"] != phase:
            raise InvalidInput(
                "resume", resume_from, f"a phase {state['phase']} checkpoint, not phase {phase}"
            )
        if state["step"] > steps:
            raise InvalidInput("steps", steps, f"below the checkpoint's step {state['step']} ({resume_from})")
        _load_weights_into(model, resume_from)
        result.step = int(state["step"])
        result.losses = [float(x) for x in state["losses"]]
        result.grad_norms = [float(x) for x in state["grad_norms"]]
        result.dopamine = [float(x) for x in state["dopamine"]]
        result.lrs = [float(x) for x in state.get("lrs", [])]
        result.val_losses = [(int(s), float(v)) for s, v in state.get("val_losses", [])]

    if phase == 1:
        _phase1(
            model,
            ids,
            result,
            options,
            out_dir,
            checkpoint_every,
            trainable,
            saved_optimizer,
            device,
            progress,
            val_ids,
        )
    else:
        _phase2(model, ids, result, options, out_dir, checkpoint_every, rule, device, progress, val_ids)
    return result


def _data_path(data: Any) -> str | None:
    """``data`` as recorded in ``train.json``: its path when it is one."""
    if isinstance(data, str):
        return data
    return os.fspath(data) if isinstance(data, os.PathLike) else None


def learning_rate(
    step: int, *, lr: float, steps: int, warmup_steps: int = 0, schedule: str = "constant"
) -> float:
    """Phase 1's learning rate at ``step`` (1-based): ``lr · step / warmup_steps`` during the warm-up, then
    ``lr`` (``"constant"``) or ``lr · (f + (1 − f) · (1 + cos(π · p)) / 2)`` (``"cosine"``, ``f`` =
    :data:`COSINE_FLOOR`, ``p`` the fraction of the post-warm-up steps done, 1 at step ``steps``)."""
    if warmup_steps and step <= warmup_steps:
        return lr * step / warmup_steps
    if schedule == "constant":
        return lr
    done = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * (COSINE_FLOOR + (1.0 - COSINE_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done))))


def _maybe_validate(
    model: UnifiedModel,
    val_ids: np.ndarray | None,
    options: dict[str, Any],
    device: torch.device,
    result: TrainResult,
) -> None:
    """Validate after step ``result.step`` when it is due (every ``val_every`` steps and after the last)."""
    every, step = options["val_every"], result.step
    if val_ids is None or not (step == options["steps"] or (every is not None and step % every == 0)):
        return
    result.val_losses.append((step, _validate(model, val_ids, options, device)))


def _val_postfix(result: TrainResult) -> dict[str, str]:
    return {"val": f"{result.val_losses[-1][1]:.4f}"} if result.val_losses else {}


def _autocast(options: dict[str, Any]) -> Any:
    """bfloat16 autocast when the run uses mixed precision (on CUDA), else nothing."""
    if options["mixed_precision"]:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _validate(
    model: UnifiedModel, val_ids: np.ndarray, options: dict[str, Any], device: torch.device
) -> float:
    """The mean next-token loss of the run's ``val_batches`` fixed validation batches, in eval mode (no
    dropout: no random numbers drawn) and without gradients."""
    losses = []
    with model.mode(False), torch.no_grad(), _autocast(options):
        for i in range(1, options["val_batches"] + 1):
            batch = _batch(val_ids, i, options, device)
            losses.append(float(model(batch, labels=batch).loss))
    return float(np.mean(losses))


def _progress(result: TrainResult, total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=result.step, desc=f"phase {result.phase}", disable=not enabled, unit="step"
    )


def _checkpoint_due(step: int, total: int, every: int | None) -> bool:
    return step == total or (every is not None and step % every == 0)


def _phase1_tensors(
    model: UnifiedModel, out: str | None, resume_from: str | None, device: torch.device
) -> tuple[list[tuple[str, torch.nn.Parameter]], dict[str, Any] | None]:
    """Phase 1's trainable ``(name, tensor)`` pairs and, when resuming, AdamW's saved state: checked before
    anything in the model changes."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise InvalidInput("model", type(model).__name__, "has no trainable parameters (phase 1)")
    names = [name for name, _ in trainable]
    if out is not None or resume_from is not None:
        kept = tuple(f"{module}." for module in _own_modules(model))
        unsaved = [name for name in names if not name.startswith(kept) and ".lora_" not in name]
        if unsaved:
            raise InvalidInput(
                "model",
                unsaved[:3],
                "trains tensors a checkpoint does not hold (only LoRA, stack, projections)",
            )
    if resume_from is None:
        return trainable, None
    path = os.path.join(resume_from, _OPTIMIZER)
    if not os.path.isfile(path):
        raise InvalidInput("resume", resume_from, f"no {_OPTIMIZER} (not a phase 1 checkpoint)")
    saved = torch.load(path, map_location=device, weights_only=True)
    if saved["names"] != names:
        raise InvalidInput("resume", resume_from, "the optimizer was saved for other trainable parameters")
    return trainable, saved["optimizer"]


def _batch(ids: np.ndarray, step: int, options: dict[str, Any], device: torch.device) -> torch.Tensor:
    """The batch of ``step`` (:func:`batch_at` with the run's options) on ``device``."""
    return batch_at(
        ids, step, batch_size=options["batch_size"], seq_len=options["seq_len"], seed=options["seed"]
    ).to(device)


def _phase1(
    model: UnifiedModel,
    ids: np.ndarray,
    result: TrainResult,
    options: dict[str, Any],
    out: str | None,
    every: int | None,
    trainable: list[tuple[str, torch.nn.Parameter]],
    saved_optimizer: dict[str, Any] | None,
    device: torch.device,
    progress: bool,
    val_ids: np.ndarray | None,
) -> None:
    names = [name for name, _ in trainable]
    params = [p for _, p in trainable]
    optimizer = torch.optim.AdamW(params, lr=options["lr"], weight_decay=options["weight_decay"])
    if saved_optimizer is not None:
        optimizer.load_state_dict(saved_optimizer)
        for group in optimizer.param_groups:  # this call's settings win (the learning rate: per step, below)
            group["weight_decay"] = options["weight_decay"]
    total, seed, clip = options["steps"], options["seed"], options["grad_clip"]
    autocast = _autocast(options)
    was_training = model.training
    model.train()
    try:
        with _progress(result, total, progress) as bar:
            while result.step < total:
                step = result.step + 1
                batch = _batch(ids, step, options, device)
                lr = learning_rate(
                    step,
                    lr=options["lr"],
                    steps=total,
                    warmup_steps=options["warmup_steps"],
                    schedule=options["lr_schedule"],
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with _seeded_rng(seed, step, device):
                    with autocast:
                        loss = model(batch, labels=batch).loss
                    if not bool(torch.isfinite(loss.detach())):
                        raise FloatingPointError(f"phase 1 step {step}: the loss is {float(loss.detach())}")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    max_norm = float("inf") if clip is None else clip
                    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                    if not bool(torch.isfinite(norm)):  # stop before the update spoils the weights
                        raise FloatingPointError(f"phase 1 step {step}: the gradient norm is {float(norm)}")
                    optimizer.step()
                result.step = step
                result.losses.append(float(loss.detach()))
                result.grad_norms.append(float(norm))
                result.lrs.append(lr)
                _maybe_validate(model, val_ids, options, device, result)
                bar.set_postfix(loss=f"{result.losses[-1]:.4f}", **_val_postfix(result), refresh=False)
                bar.update(1)
                if out is not None and _checkpoint_due(step, total, every):
                    result.checkpoints.append(_save(model, out, step, options, result, optimizer, names))
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)


def _perturbation_step(
    model: UnifiedModel, rule: Any, options: dict[str, Any]
) -> Callable[[torch.Tensor], tuple[float, float]]:
    """Phase 2 by node perturbation, one batch: ``(loss, dopamine)`` = the two perturbed passes' mean loss
    and the reward prediction error (also given to the bus, for the glass box)."""
    layer = _perturbed_layer(model, options["target"])
    gain = 1.0 if options["dopamine"] is None else float(options["dopamine"])

    def step(batch: torch.Tensor) -> tuple[float, float]:
        update = rule.step(layer, lambda: model(batch, labels=batch).loss, gain=gain)
        model.stack.bus.observe(reward=update.rpe)
        return (update.loss_plus + update.loss_minus) / 2.0, update.rpe

    return step


def _three_factor_step(
    model: UnifiedModel, rule: Any, options: dict[str, Any], result: TrainResult
) -> Callable[[torch.Tensor], tuple[float, float]]:
    """Phase 2 by the three-factor rule, one batch: ``(loss, the updated blocks' mean dopamine)``."""
    from t4dm.learning import apply_plasticity_
    from t4dm.spiking import GlassBox

    fixed, target = options["dopamine"], options["target"]
    blocks = options["blocks"] or list(range(model.stack.n_blocks))
    bus = model.stack.bus
    box = GlassBox(("spikes", "qk_spikes"), to_cpu=False)

    def step(batch: torch.Tensor) -> tuple[float, float]:
        box.clear()
        with box.attach(model.stack):
            loss = float(model(batch, labels=batch).loss)
        if fixed is None:
            # the reward: how much the token loss fell since the last step (0 at the first)
            bus.observe(reward=0.0 if not result.losses else result.losses[-1] - loss)
        else:
            bus.set("dopamine", fixed)
        levels = []
        for i in blocks:
            da = bus.get("dopamine", i)
            levels.append(float(da))
            apply_plasticity_(model.stack.blocks[i], rule, box, target=target, dopamine=da)
        return loss, float(np.mean(levels))

    return step


@torch.no_grad()
def _phase2(
    model: UnifiedModel,
    ids: np.ndarray,
    result: TrainResult,
    options: dict[str, Any],
    out: str | None,
    every: int | None,
    rule: Any,
    device: torch.device,
    progress: bool,
    val_ids: np.ndarray | None,
) -> None:
    from t4dm.learning import NodePerturbation

    if isinstance(rule, NodePerturbation):
        one_step = _perturbation_step(model, rule, options)
    else:
        one_step = _three_factor_step(model, rule, options, result)
    total, seed = options["steps"], options["seed"]
    with model.mode(False), _progress(result, total, progress) as bar:
        while result.step < total:
            step = result.step + 1
            batch = _batch(ids, step, options, device)
            with _seeded_rng(seed, step, device):  # any noise is a function of (seed, step)
                loss, dopamine = one_step(batch)
            result.step = step
            result.losses.append(loss)
            result.dopamine.append(dopamine)
            _maybe_validate(model, val_ids, options, device, result)
            bar.set_postfix(
                loss=f"{loss:.4f}", dopamine=f"{dopamine:+.4f}", **_val_postfix(result), refresh=False
            )
            bar.update(1)
            if out is not None and _checkpoint_due(step, total, every):
                result.checkpoints.append(_save(model, out, step, options, result, None, []))
