"""Triton kernels with PyTorch references (``t4dm.kernels``). Needs the ``kernels`` extra (torch, triton).

Nothing is exported yet: the LIF, spike-attention and RWKV kernels are open issues.
"""

from __future__ import annotations

__all__: list[str] = []
