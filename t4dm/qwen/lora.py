"""QLoRA adapters through peft: rank 16, α 32, on the attention's ``q_proj`` and ``v_proj``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from t4dm.errors import InvalidInput

__all__ = ["LORA_ALPHA", "LORA_DROPOUT", "LORA_R", "LORA_TARGETS", "lora_config"]

LORA_R = 16
LORA_ALPHA = 32
LORA_DROPOUT = 0.05
LORA_TARGETS = ("q_proj", "v_proj")


def lora_config(
    r: int = LORA_R,
    alpha: int = LORA_ALPHA,
    target_modules: Sequence[str] = LORA_TARGETS,
    dropout: float = LORA_DROPOUT,
) -> Any:
    """A ``peft.LoraConfig`` for a causal LM (checked: ``r`` and ``alpha`` positive ints, ``dropout`` in
    [0, 1), at least one target module name)."""
    for name, value in (("r", r), ("alpha", alpha)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput(name, value, "must be an int >= 1")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise InvalidInput("dropout", dropout, "must be a number in [0, 1)")
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise InvalidInput("target_modules", target_modules, "must name at least one module (e.g. 'q_proj')")
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=targets,
        lora_dropout=float(dropout),
        bias="none",
        task_type="CAUSAL_LM",
    )
