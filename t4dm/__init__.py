"""T4DM: memory for language-model agents in which time is first-class.

Importing ``t4dm`` is cheap: the storage engine (``t4dm.storage``), the kernels (``t4dm.kernels``, needs
torch and triton) and the rest load on first use.
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import Any

from t4dm import errors

__version__ = "0.1.0"
__all__ = ["T4DX", "AsyncMemory", "Item", "Memory", "WriteGate", "__version__", "errors"]

_LAZY = {
    "T4DX": "t4dm.storage",
    "Item": "t4dm.storage",
    "Memory": "t4dm.memory",
    "AsyncMemory": "t4dm.memory",
    "WriteGate": "t4dm.gate",
}


class _HubKernelNotice(logging.Filter):
    """bitsandbytes (0.50, on CPUs with AVX512-BF16) logs when it is first imported — by transformers too,
    whenever a model loads — that it could not fetch an optional CPU kernel from the Hugging Face hub, then
    uses its own. T4DM loads nothing from a hub at run time: that one message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_HubKernelNotice())


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 't4dm' has no attribute {name!r}")
    return getattr(import_module(module), name)
