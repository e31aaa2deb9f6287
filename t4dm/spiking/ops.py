"""The kernel functions a cortical block calls, gathered in one swappable record.

The blocks call the kernels only through :data:`KERNEL_OPS`, which holds the public functions of
:mod:`t4dm.kernels` (Triton on CUDA, the PyTorch references elsewhere). A benchmark can build the same
stack with other functions of the same signatures (``t4dm.bench.stack`` builds one from the kernels'
naive references) by passing ``ops=`` to the modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from t4dm.kernels import lif_multistep, rwkv6, rwkv6_step, spike_attention, spike_attention_step

__all__ = ["KERNEL_OPS", "SpikingOps"]


class SpikingOps(NamedTuple):
    """Functions with the signatures of the public kernels in :mod:`t4dm.kernels`.

    - ``lif``: ``lif_multistep(x, tau, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset,
      time_dim, v0, return_membrane)``;
    - ``spike_attention`` / ``spike_attention_step``; ``rwkv6`` / ``rwkv6_step`` (keyword
      ``check_decay`` accepted).
    """

    lif: Callable
    spike_attention: Callable
    spike_attention_step: Callable
    rwkv6: Callable
    rwkv6_step: Callable
    name: str = "kernels"


#: The public kernel functions: the default of every module here.
KERNEL_OPS = SpikingOps(lif_multistep, spike_attention, spike_attention_step, rwkv6, rwkv6_step)
