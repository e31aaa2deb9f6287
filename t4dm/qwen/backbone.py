"""Loading a Qwen2 backbone from a local checkpoint, optionally in 4-bit NF4 (QLoRA's quantisation)."""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import torch
from torch import nn

from t4dm.errors import InvalidInput

__all__ = ["QUANTIZE_MODES", "decoder_layers", "load_backbone", "nf4_quantization_config"]

#: Values of ``load_backbone(..., quantize=)``.
QUANTIZE_MODES = ("nf4", "none")


def nf4_quantization_config() -> Any:
    """QLoRA's ``BitsAndBytesConfig``: 4-bit NF4 weights, bfloat16 compute, double quantisation.

    Raises ``ImportError`` when bitsandbytes is not installed and ``RuntimeError`` without a CUDA device
    (bitsandbytes' 4-bit layers need one).
    """
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            "quantize='nf4' needs bitsandbytes (pip install bitsandbytes); use quantize='none' without it"
        )
    if not torch.cuda.is_available():
        raise RuntimeError("quantize='nf4' needs a CUDA device (bitsandbytes 4-bit); use quantize='none'")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )


def load_backbone(
    path: str | os.PathLike[str],
    quantize: str = "nf4",
    device_map: str | dict[str, Any] | None = None,
    dtype: torch.dtype | str | None = None,
) -> nn.Module:
    """A ``Qwen2ForCausalLM`` from the local checkpoint folder ``path`` (nothing is downloaded).

    Args:
        path: a folder holding ``config.json`` (``model_type`` ``"qwen2"``) and the weights.
        quantize: ``"nf4"`` (4-bit NF4, bfloat16 compute, double quantisation: needs bitsandbytes and CUDA)
            or ``"none"``.
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"`` or ``{"": 0}``); ``None`` loads on the CPU
            (with ``quantize="nf4"``, ``None`` means ``{"": 0}``: 4-bit weights live on the GPU).
        dtype: of the unquantised weights; default bfloat16 with ``"nf4"``, the checkpoint's own with
            ``"none"``.

    Raises:
        InvalidInput: ``path`` is not a folder with a Qwen2 ``config.json``, or ``quantize`` is unknown.
        ImportError / RuntimeError: ``"nf4"`` without bitsandbytes / without CUDA.
    """
    folder = os.fspath(path)
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise InvalidInput("path", folder, "not a folder holding a model's config.json (models load locally)")
    try:
        with open(config_file, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise InvalidInput("path", folder, f"config.json cannot be read as a JSON object: {exc}") from exc
    if model_type != "qwen2":
        raise InvalidInput("path", folder, f"config.json has model_type={model_type!r}, expected 'qwen2'")
    if quantize not in QUANTIZE_MODES:
        raise InvalidInput("quantize", quantize, f"expected one of {QUANTIZE_MODES}")
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"local_files_only": True}
    if quantize == "nf4":
        kwargs["quantization_config"] = nf4_quantization_config()
        kwargs["dtype"] = torch.bfloat16 if dtype is None else dtype
        kwargs["device_map"] = {"": 0} if device_map is None else device_map
    else:
        kwargs["dtype"] = "auto" if dtype is None else dtype
        if device_map is not None:
            kwargs["device_map"] = device_map
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a ``Qwen2ForCausalLM``, also inside a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise InvalidInput(
            "backbone",
            type(model).__name__,
            "expected a Qwen2ForCausalLM (model.model.layers), or a peft wrapper",
        )
    return layers
