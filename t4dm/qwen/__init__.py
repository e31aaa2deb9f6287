"""The unified model (``t4dm.qwen``): a Qwen2 backbone (NF4 + QLoRA), the spiking cortical stack
hooked after one decoder layer, and a τ-gated T4DX memory. Needs torch, transformers and peft.

    from t4dm.qwen import UnifiedModel, load_backbone
    model = UnifiedModel(load_backbone("/models/qwen2.5-3b"), layer=17, memory_dim=256)
    model.add_lora()                       # r=16, alpha=32 on q_proj, v_proj
    out = model.generate(input_ids, max_new_tokens=32)

See docs/qwen.md.
"""

from __future__ import annotations

import importlib
from typing import Any

# Submodules are imported on first use (PEP 562), so that ``t4dm train --help`` and every other ``t4dm``
# command do not pay for importing torch, transformers and peft.
_EXPORTS = {
    "QUANTIZE_MODES": "backbone",
    "decoder_layers": "backbone",
    "keep_nf4_layout": "backbone",
    "load_backbone": "backbone",
    "nf4_quantization_config": "backbone",
    "repacked_nf4_layers": "backbone",
    "checkpoint_memory": "checkpoint",
    "ModelEmbedder": "embedder",
    "encode_text": "embedder",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "QWEN25_3B": "config",
    "TINY_QWEN": "config",
    "qwen_config": "config",
    "tiny_qwen_config": "config",
    "LORA_ALPHA": "lora",
    "LORA_DROPOUT": "lora",
    "LORA_R": "lora",
    "LORA_TARGETS": "lora",
    "lora_config": "lora",
    "DEFAULT_MODEL_GATE": "memory",
    "MemoryWrite": "memory",
    "ModelMemory": "memory",
    "PHASES": "training",
    "TrainResult": "training",
    "batch_at": "training",
    "latest_checkpoint": "training",
    "load_tokens": "training",
    "train": "training",
    "DEFAULT_LAYER": "unified",
    "GenerationOutput": "unified",
    "UnifiedModel": "unified",
    "UnifiedOutput": "unified",
    "sample_token": "unified",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
