"""Training the unified model: not done yet.

Phase 1 (surrogate-gradient backprop through the stack plus QLoRA on a next-token loss) and phase 2 (the
three-factor local rules only, no backprop through Qwen) are specified in issue 7 and docs/qwen.md; the
pieces they will use exist (``UnifiedModel.forward(labels=...)``, ``trainable_parameters``,
``save_checkpoint``, ``t4dm.learning``), the loops do not. Calling :func:`train` says so.
"""

from __future__ import annotations

from typing import Any, NoReturn

from t4dm.errors import InvalidInput

__all__ = ["PHASES", "train"]

PHASES = (1, 2)


def train(model: Any, data: Any, *, phase: int = 1, **options: Any) -> NoReturn:
    """Train ``model`` on ``data`` (phase 1: backprop + QLoRA; phase 2: local three-factor rules).

    Raises:
        InvalidInput: ``phase`` is not 1 or 2.
        NotImplementedError: always, for now: the training loops are not written yet.
    """
    if phase not in PHASES or isinstance(phase, bool):
        raise InvalidInput("phase", phase, f"expected one of {PHASES}")
    what = (
        "phase 1 (surrogate-gradient backprop through the stack + QLoRA, gradient clipping, mixed precision, "
        "checkpoints, resume)"
        if phase == 1
        else "phase 2 (three-factor local rules only, no backprop through Qwen)"
    )
    raise NotImplementedError(f"t4dm.qwen training {what} is not implemented yet: see docs/qwen.md")
