"""Tiny models for the unified-model tests: a random Qwen2 (hidden 64, 4 layers, 4 heads, 2 KV heads,
vocabulary 256) with a 2-block stack of width 32 after decoder layer 2."""

from __future__ import annotations

import torch

STACK = {"d_stack": 32, "n_blocks": 2, "n_heads": 2}
LAYER = 2
VOCAB = 256


def tiny_base(seed: int = 0):
    """A tiny random ``Qwen2ForCausalLM`` in eval mode, the same for the same seed."""
    from transformers import Qwen2ForCausalLM

    from t4dm.qwen import tiny_qwen_config

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(tiny_qwen_config()).eval()


def tiny_unified(seed: int = 0, *, base=None, lora: bool = False, up_std: float = 0.0, **kwargs):
    """A ``UnifiedModel`` on ``base`` (default :func:`tiny_base`) in eval mode; ``up_std > 0`` fills the
    up-projection with normal noise of that std (as training would), so the stack changes the logits."""
    from t4dm.qwen import UnifiedModel

    base = tiny_base(seed) if base is None else base
    options = {"layer": LAYER, **STACK, **kwargs}
    torch.manual_seed(seed + 1)
    model = UnifiedModel(base, **options).eval()
    if lora:
        model.add_lora(dropout=0.0)
    if up_std:
        torch.nn.init.normal_(model.up.weight, std=up_std)
    return model


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)


def left_padded(rows: list[torch.Tensor], pad_id: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` (each ``[1, n]``) as one left-padded batch: ids and attention mask ``[B, max n]``."""
    width = max(row.shape[1] for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - row.shape[1] :], mask[b, width - row.shape[1] :] = row[0], 1
    return ids, mask
