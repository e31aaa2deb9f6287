"""Loading a Qwen2 backbone from a local checkpoint, optionally in 4-bit NF4 (QLoRA's quantisation)."""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import torch
from torch import nn

from t4dm.errors import InvalidInput

__all__ = [
    "QUANTIZE_MODES",
    "decoder_layers",
    "keep_nf4_layout",
    "load_backbone",
    "nf4_quantization_config",
    "repacked_nf4_layers",
]

#: Values of ``load_backbone(..., quantize=)``.
QUANTIZE_MODES = ("nf4", "none")
#: The bitsandbytes release from which NF4 runs on the CPU here (its CPU backend; tested with 0.50.2).
CPU_NF4_BITSANDBYTES = (0, 50)


def nf4_quantization_config() -> Any:
    """QLoRA's ``BitsAndBytesConfig``: 4-bit NF4 weights, bfloat16 compute, double quantisation.

    Raises ``ImportError`` when bitsandbytes is not installed, or without a CUDA device when its version is
    below 0.50 (the first we run NF4 with on the CPU).
    """
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            "quantize='nf4' needs bitsandbytes (pip install bitsandbytes); use quantize='none' without it"
        )
    if not torch.cuda.is_available():
        from importlib.metadata import version

        found = version("bitsandbytes")
        if tuple(int(p) for p in found.split(".")[:2] if p.isdigit()) < CPU_NF4_BITSANDBYTES:
            raise ImportError(
                f"quantize='nf4' without CUDA needs bitsandbytes >= "
                f"{'.'.join(map(str, CPU_NF4_BITSANDBYTES))} (found {found}); use quantize='none'"
            )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )


def keep_nf4_layout(model: nn.Module) -> int:
    """Stop bitsandbytes from repacking ``model``'s 4-bit weights for CPU inference; returns how many
    4-bit layers it saw.

    On a CPU with AVX512-BF16, bitsandbytes' ``Linear4bit`` rewrites its weight in place the first time it
    runs in eval mode without gradients (a faster layout, with the block scales rounded to bfloat16). The
    layer keeps that layout when training resumes, and there it breaks: an in-place error where the layer
    has a bias, and no gradient to the layer's input where it has none (bitsandbytes 0.50.2). Keeping the
    loaded layout makes inference and training see the same weights; it costs CPU decoding speed (a
    4-layer, hidden-1024 model: 12.8 ms per token instead of 5.1 ms on a 2-core AVX512 machine).
    """
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def repacked_nf4_layers(model: nn.Module) -> list[str]:
    """Names of ``model``'s 4-bit layers whose weights bitsandbytes already repacked for CPU inference
    (see :func:`keep_nf4_layout`): such a model cannot train."""
    names = []
    for name, module in model.named_modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):
            names.append(name)
    return names


def load_backbone(
    path: str | os.PathLike[str],
    quantize: str = "nf4",
    device_map: str | dict[str, Any] | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    inference_only: bool = False,
) -> nn.Module:
    """A ``Qwen2ForCausalLM`` from the local checkpoint folder ``path`` (nothing is downloaded).

    Args:
        path: a folder holding ``config.json`` (``model_type`` ``"qwen2"``) and the weights.
        quantize: ``"nf4"`` (4-bit NF4, bfloat16 compute, double quantisation: needs bitsandbytes; on the
            CPU, bitsandbytes >= 0.50) or ``"none"``.
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"`` or ``{"": 0}``); ``None`` loads on the CPU
            (with ``quantize="nf4"``, ``None`` means ``{"": 0}`` where CUDA is, else the CPU). A 4-bit
            model keeps its loaded weight layout (:func:`keep_nf4_layout`), so it can train after eval.
        inference_only: with ``"nf4"``, let bitsandbytes repack the 4-bit weights for CPU inference the first
            time they run in eval mode (2.5x faster decoding on an AVX512-BF16 CPU; no effect on CUDA). Such a
            model cannot train once it has run: :class:`~t4dm.qwen.UnifiedModel` then refuses ``train()``.
        dtype: of the unquantised weights; default bfloat16 with ``"nf4"``, the checkpoint's own with
            ``"none"``.

    Raises:
        InvalidInput: ``path`` is not a folder with a Qwen2 ``config.json``, or ``quantize`` is unknown.
        ImportError: ``"nf4"`` without bitsandbytes (or, without CUDA, with one older than 0.50).
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
    if not isinstance(inference_only, bool):
        raise InvalidInput("inference_only", inference_only, "must be True or False")
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"local_files_only": True}
    if quantize == "nf4":
        kwargs["quantization_config"] = nf4_quantization_config()
        kwargs["dtype"] = torch.bfloat16 if dtype is None else dtype
        default_map: dict[str, Any] = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
        kwargs["device_map"] = default_map if device_map is None else device_map
    else:
        kwargs["dtype"] = "auto" if dtype is None else dtype
        if device_map is not None:
            kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if quantize == "nf4":
        if inference_only:
            model.t4dm_inference_only = True  # UnifiedModel leaves the layout to bitsandbytes
        else:
            keep_nf4_layout(model)
    return model


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
