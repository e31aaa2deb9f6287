"""Triton kernels with PyTorch references (``t4dm.kernels``). Needs the ``kernels`` extra (torch, triton).

Each op has a plain PyTorch specification (``naive.py``), Triton kernels used on CUDA, and a public
function that checks its inputs. On the CPU the public functions run PyTorch code; the tests also run
the Triton kernels there under ``TRITON_INTERPRET=1``.

* :func:`lif_multistep`: the multi-step LIF neuron with surrogate gradients (SpikingJelly semantics).
* :func:`rwkv6`, :func:`rwkv6_step`: RWKV-6 recurrence (flash-linear-attention ``chunk_rwkv6`` semantics).
* :func:`spike_attention`, :func:`spike_attention_step`: causal, decay-weighted attention without softmax.
"""

from __future__ import annotations

if __name__ == "kernels":
    # This folder is installed as t4dm.kernels. Run from the repository root (pytest, `python -m ...`), the
    # root is on sys.path and `import kernels` finds this folder instead of Hugging Face's `kernels` package,
    # which transformers (5.25) imports with its models. Hand the import on to that package: the import
    # system returns what sys.modules holds under the name once this file has run.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _path)
    if _spec is None or _spec.loader is None:
        # Not installed. Raising here would not help: `importlib.util.find_spec("kernels")` has already found
        # this folder, and transformers (5.17 on the GPU image, 5.25 here) then imports it to read a version,
        # unguarded, so every model import would fail. Stay what Python makes of a stray folder on sys.path (a
        # namespace package): no file, no version, no names, no submodules. transformers reads exactly that as
        # "not installed"; `from kernels import x` still raises ImportError.
        __file__ = None
        __path__ = []
        del annotations, importlib, os, sys, _root, _path, _spec
    else:
        _module = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _module
        try:
            _spec.loader.exec_module(_module)
        except BaseException:
            del sys.modules["kernels"]
            raise
else:
    from .lif import lif_multistep
    from .rwkv import rwkv6, rwkv6_step
    from .spike_attention import spike_attention, spike_attention_step

    __all__ = ["lif_multistep", "rwkv6", "rwkv6_step", "spike_attention", "spike_attention_step"]
