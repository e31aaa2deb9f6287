"""RWKV-6 recurrence (flash-linear-attention ``chunk_rwkv6`` semantics): chunked Triton kernels on CUDA,
a fused decoding step, and the plain PyTorch specification in ``naive.py``."""

from __future__ import annotations

from .interface import rwkv6, rwkv6_step

__all__ = ["rwkv6", "rwkv6_step"]
