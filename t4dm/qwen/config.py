"""Qwen2 configurations: the real Qwen2.5-3B shape and tiny random models for tests.

Nothing here downloads anything: :data:`QWEN25_3B` is the shape of the published checkpoint written out as
``Qwen2Config`` keyword arguments, so a randomly initialised model of the real size can be built (e.g. on
the ``meta`` device to count parameters, or on a GPU to measure memory) without the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from t4dm.errors import InvalidInput

__all__ = ["QWEN25_3B", "TINY_QWEN", "qwen_config", "tiny_qwen_config"]

#: Qwen2.5-3B (base): ``Qwen2Config(**QWEN25_3B)`` has the published checkpoint's shape.
QWEN25_3B: Mapping[str, Any] = MappingProxyType(
    {
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "use_sliding_window": False,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    }
)

#: A tiny Qwen2 for CPU tests: hidden 64, 4 layers, 4 heads (head_dim 16), 2 KV heads, vocabulary 256.
TINY_QWEN: Mapping[str, Any] = MappingProxyType(
    {
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "use_sliding_window": False,
    }
)


def qwen_config(spec: Mapping[str, Any] = QWEN25_3B, **overrides: Any) -> Any:
    """A ``transformers.Qwen2Config`` from ``spec`` (default :data:`QWEN25_3B`) with ``overrides``.

    An override that is not a ``Qwen2Config`` field raises :class:`~t4dm.errors.InvalidInput` naming it.
    """
    from transformers import Qwen2Config

    known = set(getattr(Qwen2Config, "__dataclass_fields__", ())) | {"attn_implementation"}
    for name, value in overrides.items():
        if len(known) > 1 and name not in known:
            raise InvalidInput(name, value, "not a Qwen2Config field")
    kwargs = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in spec.items()}
    kwargs.update(overrides)
    return Qwen2Config(**kwargs)


def tiny_qwen_config(**overrides: Any) -> Any:
    """A small ``Qwen2Config`` (:data:`TINY_QWEN` with ``overrides``) for random models in tests."""
    return qwen_config(TINY_QWEN, **overrides)
