"""The unified model (``t4dm.qwen``): a Qwen2 backbone (NF4 + QLoRA on a GPU), the spiking cortical stack
hooked after one decoder layer, and a τ-gated T4DX memory. Needs torch, transformers and peft.

    from t4dm.qwen import UnifiedModel, load_backbone
    model = UnifiedModel(load_backbone("/models/qwen2.5-3b"), layer=17, memory_dim=256)
    model.add_lora()                       # r=16, alpha=32 on q_proj, v_proj
    out = model.generate(input_ids, max_new_tokens=32)

See docs/qwen.md.
"""

from __future__ import annotations

from .backbone import QUANTIZE_MODES, decoder_layers, load_backbone, nf4_quantization_config
from .checkpoint import load_checkpoint, save_checkpoint
from .config import QWEN25_3B, TINY_QWEN, qwen_config, tiny_qwen_config
from .lora import LORA_ALPHA, LORA_DROPOUT, LORA_R, LORA_TARGETS, lora_config
from .memory import DEFAULT_MODEL_GATE, MemoryWrite, ModelMemory
from .train import PHASES, train
from .unified import DEFAULT_LAYER, GenerationOutput, UnifiedModel, UnifiedOutput

__all__ = [
    "DEFAULT_LAYER",
    "DEFAULT_MODEL_GATE",
    "LORA_ALPHA",
    "LORA_DROPOUT",
    "LORA_R",
    "LORA_TARGETS",
    "PHASES",
    "QUANTIZE_MODES",
    "QWEN25_3B",
    "TINY_QWEN",
    "GenerationOutput",
    "MemoryWrite",
    "ModelMemory",
    "UnifiedModel",
    "UnifiedOutput",
    "decoder_layers",
    "load_backbone",
    "load_checkpoint",
    "lora_config",
    "nf4_quantization_config",
    "qwen_config",
    "save_checkpoint",
    "tiny_qwen_config",
    "train",
]
