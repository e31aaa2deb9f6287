"""Spike attention: causal linear attention over spike trains with an exponential STDP window, no softmax.
Chunked Triton kernels on CUDA, a fused decoding step, and the plain PyTorch specification in ``naive.py``."""

from __future__ import annotations

from .interface import spike_attention, spike_attention_step

__all__ = ["spike_attention", "spike_attention_step"]
