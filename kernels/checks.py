"""Input checks shared by the kernels' public functions (plain PyTorch, no Triton import).

They raise ``ValueError`` naming the argument and the value. Under ``torch.compile`` the checks that read a
tensor's values become ``torch._assert_async`` in the graph (a ``RuntimeError`` when it fails) instead of a
data-dependent branch, so the call stays one graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "FLOAT_DTYPES",
    "check_number",
    "check_scale",
    "check_shape",
    "check_tensor",
    "or_empty",
    "require",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x: object, ndim: int, layout: str) -> torch.Tensor:
    """``x`` is a floating tensor with ``ndim`` dimensions (``layout`` names them in the message)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name} must be a floating tensor (float16, bfloat16, float32, float64), got {x.dtype}"
        )
    return x


def check_shape(name: str, x: torch.Tensor, expected: tuple[int, ...], layout: str) -> None:
    if tuple(x.shape) != expected:
        raise ValueError(f"{name} must have shape {layout} = {expected}, got {tuple(x.shape)}")


def _finite(value: object) -> bool:
    # comparisons rather than math.isfinite: torch.compile with dynamic shapes may hand us a symbolic float
    return not isinstance(value, bool) and isinstance(value, (int, float)) and -math.inf < value < math.inf


def check_number(name: str, value: object) -> float:
    """A finite real number (not a bool), as a float."""
    if not _finite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def check_scale(scale: object, dim: int) -> float:
    """``scale``, or ``dim ** -0.5`` when it is None."""
    if scale is None:
        return dim**-0.5
    if not _finite(scale):
        raise ValueError(f"scale must be a finite float or None, got {scale!r}")
    return float(scale)


def require(condition: torch.Tensor, message: Callable[[], str], compiled_message: str) -> None:
    """Raise ``ValueError(message())`` unless the boolean tensor ``condition`` is true (a host read: on CUDA a
    sync). Under torch.compile: ``torch._assert_async(condition, compiled_message)`` in the graph."""
    if torch.compiler.is_compiling():
        torch._assert_async(condition, compiled_message)
    elif not bool(condition):
        raise ValueError(message())


def or_empty(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``t``, or an empty float32 tensor on ``like``'s device for an absent optional output: a PyTorch
    operator cannot return None (its fake says ``[0]`` for the same case)."""
    return t if t is not None else like.new_empty(0, dtype=torch.float32)
