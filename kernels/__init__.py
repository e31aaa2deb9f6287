"""Triton kernels with PyTorch references (``t4dm.kernels``). Needs the ``kernels`` extra (torch, triton).

Each op has a plain PyTorch specification (``naive.py``), Triton kernels used on CUDA, and a public
function that checks its inputs. On the CPU the public functions run PyTorch code; the tests also run
the Triton kernels there under ``TRITON_INTERPRET=1``.

* :func:`lif_multistep`: the multi-step LIF neuron with surrogate gradients (SpikingJelly semantics).
* :func:`rwkv6`, :func:`rwkv6_step`: RWKV-6 recurrence (flash-linear-attention ``chunk_rwkv6`` semantics).
* :func:`spike_attention`, :func:`spike_attention_step`: causal, decay-weighted attention without softmax.
"""

from __future__ import annotations

from .lif import lif_multistep
from .rwkv import rwkv6, rwkv6_step
from .spike_attention import spike_attention, spike_attention_step

__all__ = ["lif_multistep", "rwkv6", "rwkv6_step", "spike_attention", "spike_attention_step"]
