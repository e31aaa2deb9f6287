"""Shared test configuration: GPU tests skip without CUDA; without CUDA the Triton kernels run in the
interpreter."""

from __future__ import annotations

import importlib.util
import os

import pytest


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when the first test module imports
# t4dm.kernels (the spiking stack's tests do, before the kernels' own): choose it here, before any.
if "TRITON_INTERPRET" not in os.environ and not _cuda_available():
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (run scripts/gpu_check.sh on the GPU machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
