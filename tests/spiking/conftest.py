"""Spiking tests run on tiny tensors: one intra-op thread is faster there, and far steadier when another
process shares the cores (two threads then stall each other on every small op)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
