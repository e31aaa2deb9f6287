"""The unified model's memory keys as a memory-SDK embedder.

``Memory(embedder=ModelEmbedder(model, tokenizer))`` stores texts as the vectors the model itself writes
(:meth:`~t4dm.qwen.UnifiedModel.remember`) and reads with (the hooked layer's state averaged over the
tokens, through the fixed ``memory_query`` projection). Attach the same store to the model
(``model.attach_memory(memory.db)``) and what an agent ``add``-ed through the SDK is what the model
retrieves while it generates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from t4dm.errors import InvalidInput
from t4dm.memory.embedder import _unit_rows

from .unified import UnifiedModel

__all__ = ["ModelEmbedder", "encode_text"]


def encode_text(text: str, tokenizer: Any) -> list[int]:
    """Token ids of ``text``: ``tokenizer`` is ``"bytes"`` (UTF-8 bytes as ids 0‥255), an object with
    ``encode(text)`` (a transformers tokenizer), or a callable ``text -> ids``."""
    if isinstance(tokenizer, str):  # a str has .encode too: only "bytes" means something here
        if tokenizer != "bytes":
            raise InvalidInput("tokenizer", tokenizer, "the only named tokenizer is 'bytes'")
        return list(text.encode("utf-8"))
    if callable(getattr(tokenizer, "encode", None)):
        return [int(i) for i in tokenizer.encode(text)]
    if callable(tokenizer):
        return [int(i) for i in tokenizer(text)]
    raise InvalidInput(
        "tokenizer", type(tokenizer).__name__, "must be 'bytes', have encode(text), or be callable"
    )


class ModelEmbedder:
    """Texts → unit-norm memory keys ``[n, memory_dim]`` of a :class:`~t4dm.qwen.UnifiedModel`.

    Each text is tokenised (its first ``max_tokens`` tokens), run through the model in eval mode without
    gradients and without a memory read (so a text's vector does not depend on what the store holds), and
    the hooked layer's state averaged over its tokens goes through ``memory_query``: what
    :meth:`~t4dm.qwen.UnifiedModel.remember` writes and the model's reads query with, normalised to unit
    length (T4DX searches by cosine). Texts run ``batch_size`` at a time, right-padded, each as alone.

    Args:
        model: a unified model built with ``memory_dim``.
        tokenizer: ``"bytes"``, an object with ``encode(text)``, or a callable ``text -> ids``.
        batch_size: texts per forward pass.
        max_tokens: tokens kept per text (the first ones).
        pad_id: the id padding rows (never attended to).
    """

    def __init__(
        self,
        model: UnifiedModel,
        tokenizer: Any,
        *,
        batch_size: int = 8,
        max_tokens: int = 512,
        pad_id: int = 0,
    ) -> None:
        if not isinstance(model, UnifiedModel):
            raise InvalidInput("model", type(model).__name__, "expected a t4dm.qwen.UnifiedModel")
        if model.memory_query is None:
            raise InvalidInput("model", "memory_dim=None", "the model has no memory projection (memory_dim=)")
        for name, value in (("batch_size", batch_size), ("max_tokens", max_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(name, value, "must be an int >= 1")
        if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
            raise InvalidInput("pad_id", pad_id, "must be a token id (an int >= 0)")
        encode_text("dimension probe", tokenizer)  # a bad tokenizer fails here, not at the first add
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.pad_id = pad_id
        self.dim = int(model.spec["memory_dim"])
        self.name = f"t4dm.qwen.UnifiedModel(layer={model.layer}).memory_key"

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        rows = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInput(f"texts[{i}]", type(text).__name__, "must be a string")
            ids = encode_text(text, self.tokenizer)[: self.max_tokens]
            if not ids:
                raise InvalidInput(f"texts[{i}]", text, "has no tokens")
            rows.append(ids)
        return rows

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = self._ids(texts)
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        device = self.model.down.weight.device
        keys = []
        with self.model.mode(False), torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                width = max(len(r) for r in batch)
                ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for b, row in enumerate(batch):
                    ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
                    mask[b, : len(row)] = 1
                padded = not bool(mask.all())
                out = self.model(
                    ids.to(device), attention_mask=mask.to(device) if padded else None, read_memory=False
                )
                keys.append(self.model.memory_key(out.layer_mean))
        return _unit_rows(np.concatenate(keys), len(rows), self.dim, self.name)
