"""Fused multi-step LIF neuron with surrogate gradients (``t4dm.kernels.lif``).

``lif_multistep`` runs the Triton kernels on CUDA tensors, the Numba kernels (``cpu.py``) on CPU tensors and the
PyTorch reference (``naive.py``) elsewhere.
"""

from __future__ import annotations

from .fused import lif_multistep

__all__ = ["lif_multistep"]
