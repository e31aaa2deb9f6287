"""Checkpoints of the unified model's own weights: LoRA adapters, the stack (with its neuromodulator state)
and the projections. The backbone is not copied: it loads from its own local path.

A checkpoint is a folder with ``unified.json`` (format, the model's shape, the LoRA settings) and
``unified.safetensors`` (``lora/<peft key>`` and ``own/<module>.<name>`` tensors), each published atomically
(write a temporary file, fsync, rename, fsync the folder).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from t4dm.errors import InvalidInput

from .unified import UnifiedModel

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = 1
_SPEC = "unified.json"
_TENSORS = "unified.safetensors"
_OWN = ("stack", "down", "up", "memory_query", "memory_context")


def _own_modules(model: UnifiedModel) -> dict[str, nn.Module]:
    return {name: getattr(model, name) for name in _OWN if getattr(model, name) is not None}


def save_checkpoint(model: UnifiedModel, path: str | os.PathLike[str]) -> None:
    """Write ``model``'s LoRA weights, stack (parameters and buffers: the neuromodulator levels and expected
    reward) and projections to the folder ``path`` (created if needed)."""
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
    spec = {"format": CHECKPOINT_FORMAT, "model": model.spec, "lora": model.lora, "dtype": dtype}
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
