"""Checkpoints of the unified model's own weights: LoRA adapters, the stack (with its neuromodulator state)
and the projections. The backbone is not copied: it loads from its own local path.

A checkpoint is a folder with ``unified.json`` (format, the model's shape, the LoRA settings, the memory's
settings) and ``unified.safetensors`` (``lora/<peft key>`` and ``own/<module>.<name>`` tensors), each
published atomically (write a temporary file, fsync, rename, fsync the folder), and — when the model has a
memory attached — ``memory/``: a :meth:`T4DX.backup <t4dm.storage.T4DX.backup>` of the store it ran with
(open it with :func:`checkpoint_memory`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from t4dm.errors import InvalidInput

from .unified import UnifiedModel

__all__ = ["CHECKPOINT_FORMAT", "MEMORY_FOLDER", "checkpoint_memory", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = 1
_SPEC = "unified.json"
_TENSORS = "unified.safetensors"
_OWN = ("stack", "down", "up", "memory_query", "memory_context")
MEMORY_FOLDER = "memory"  # the store snapshot inside a checkpoint


def _own_modules(model: UnifiedModel) -> dict[str, nn.Module]:
    return {name: getattr(model, name) for name in _OWN if getattr(model, name) is not None}


def _snapshot_memory(model: UnifiedModel, folder: str) -> dict[str, Any] | None:
    """Back the attached store up into ``folder/memory`` (replacing an older snapshot there only once the new
    one is complete); returns the memory's settings for the spec, or None without a memory."""
    import shutil

    memory = model.memory
    if memory is None:
        return None
    note: dict[str, Any] = {
        "kind": memory.kind,
        "k": memory.k,
        "dim": memory.dim,
        "where": memory.where,
        "snapshot": None,
    }
    backup = getattr(memory.store, "backup", None)
    if callable(backup):
        target = os.path.join(folder, MEMORY_FOLDER)
        fresh = target + ".new"
        if os.path.lexists(fresh):
            shutil.rmtree(fresh)
        backup(fresh)
        if os.path.lexists(target):
            old = target + ".old"
            os.rename(target, old)
            os.rename(fresh, target)
            shutil.rmtree(old)
        else:
            os.rename(fresh, target)
        note["snapshot"] = MEMORY_FOLDER
        note["last_seq"] = int(memory.store.stats()["last_seq"])
    return note


def checkpoint_memory(path: str | os.PathLike[str], **options: Any) -> Any:
    """Open the T4DX store snapshot saved in the checkpoint at ``path`` (``T4DX.open`` ``options``); attach it
    with ``model.attach_memory(store)`` to run as the checkpoint did. Opening writes to the snapshot; open a
    :meth:`~t4dm.storage.T4DX.backup` of it to keep it as it was.

    Raises :class:`~t4dm.errors.InvalidInput` naming ``path`` when the checkpoint holds no snapshot."""
    from t4dm.storage import T4DX

    folder = os.path.join(os.fspath(path), MEMORY_FOLDER)
    if not os.path.isdir(folder):
        raise InvalidInput("path", os.fspath(path), "this checkpoint holds no memory snapshot")
    return T4DX.open(folder, **options)


def save_checkpoint(model: UnifiedModel, path: str | os.PathLike[str]) -> None:
    """Write ``model``'s LoRA weights, stack (parameters and buffers: the neuromodulator levels and expected
    reward) and projections to the folder ``path`` (created if needed), and a backup of the T4DX store
    attached to it (``memory/``: the snapshot it ran with)."""
    from safetensors.torch import save

    from t4dm.storage.fsutil import publish_bytes

    if not isinstance(model, UnifiedModel):
        raise InvalidInput("model", type(model).__name__, "expected a UnifiedModel")
    folder = os.fspath(path)
    os.makedirs(folder, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    if model.lora is not None:
        from peft import get_peft_model_state_dict

        for key, value in get_peft_model_state_dict(model.backbone).items():
            tensors[f"lora/{key}"] = value.detach().cpu().contiguous()
    for module_name, module in _own_modules(model).items():
        for key, value in module.state_dict().items():
            tensors[f"own/{module_name}.{key}"] = value.detach().cpu().contiguous()
    dtype = str(model.down.weight.dtype).removeprefix("torch.")
    memory = _snapshot_memory(model, folder)
    spec = {
        "format": CHECKPOINT_FORMAT,
        "model": model.spec,
        "lora": model.lora,
        "dtype": dtype,
        "memory": memory,
    }
    publish_bytes(os.path.join(folder, _TENSORS), save(tensors))
    publish_bytes(os.path.join(folder, _SPEC), json.dumps(spec, indent=2, sort_keys=True).encode())


def load_checkpoint(path: str | os.PathLike[str], backbone: nn.Module) -> UnifiedModel:
    """A :class:`UnifiedModel` on ``backbone`` (a plain ``Qwen2ForCausalLM``, e.g. from
    :func:`~t4dm.qwen.load_backbone`) with the shape, LoRA adapters and weights saved at ``path``.

    Raises :class:`~t4dm.errors.InvalidInput` naming ``path`` for a folder that holds no checkpoint (or one
    of an unknown format) and naming ``backbone`` when the saved weights do not fit it.
    """
    from safetensors.torch import load_file

    folder = os.fspath(path)
    spec_file, tensor_file = os.path.join(folder, _SPEC), os.path.join(folder, _TENSORS)
    if not (os.path.isfile(spec_file) and os.path.isfile(tensor_file)):
        raise InvalidInput("path", folder, f"not a unified-model checkpoint (needs {_SPEC} and {_TENSORS})")
    with open(spec_file, encoding="utf-8") as f:
        spec: dict[str, Any] = json.load(f)
    if spec.get("format") != CHECKPOINT_FORMAT:
        raise InvalidInput(
            "path", folder, f"checkpoint format {spec.get('format')!r}, expected {CHECKPOINT_FORMAT}"
        )
    if hasattr(backbone, "get_base_model"):
        raise InvalidInput(
            "backbone", type(backbone).__name__, "expected the plain base model (no peft wrapper)"
        )
    shape = dict(spec["model"])
    model = UnifiedModel(
        backbone,
        layer=shape["layer"],
        d_stack=shape["d_stack"],
        n_blocks=shape["n_blocks"],
        n_heads=shape["n_heads"],
        memory_dim=shape["memory_dim"],
        dtype=getattr(torch, spec["dtype"]),
        stack_kwargs=shape["stack_kwargs"],
    )
    tensors = load_file(tensor_file)
    try:
        if spec["lora"] is not None:
            model.add_lora(**spec["lora"])
        if model.lora is not None:
            from peft import set_peft_model_state_dict

            lora = {k.removeprefix("lora/"): v for k, v in tensors.items() if k.startswith("lora/")}
            result = set_peft_model_state_dict(model.backbone, lora)
            if getattr(result, "unexpected_keys", None):
                raise RuntimeError(f"unexpected LoRA keys {result.unexpected_keys[:3]}")
            expected = {k for k in model.backbone.state_dict() if ".lora_" in k}
            missing = [k for k in getattr(result, "missing_keys", []) if k in expected]
            if missing:
                raise RuntimeError(f"missing LoRA keys {missing[:3]}")
        for module_name, module in _own_modules(model).items():
            prefix = f"own/{module_name}."
            own = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
            module.load_state_dict(own, strict=True)
    except (RuntimeError, ValueError) as exc:
        model.release()  # the caller's backbone as it was
        if isinstance(exc, InvalidInput):
            raise
        raise InvalidInput(
            "backbone", type(backbone).__name__, f"the checkpoint does not fit it: {exc}"
        ) from exc
    return model
