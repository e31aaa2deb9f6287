"""The source folder ``kernels/`` (installed as ``t4dm.kernels``) does not shadow Hugging Face's ``kernels``
package, which transformers imports, when Python runs from the repository root (pytest, ``python -m``)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str) -> subprocess.CompletedProcess[str]:
    # `python -c` puts the working directory (here the repository root) first on sys.path
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_import_kernels_from_the_root_gets_the_installed_package_or_none():
    try:
        importlib.metadata.distribution("kernels")
        installed = True
    except importlib.metadata.PackageNotFoundError:
        installed = False
    done = _run("import kernels, os; print(os.path.abspath(kernels.__file__))")
    if installed:
        assert done.returncode == 0, done.stderr
        where = done.stdout.strip()
        assert not where.startswith(os.path.join(ROOT, "kernels") + os.sep), where
        assert "site-packages" in where or "dist-packages" in where, where
    else:
        assert done.returncode != 0 and "No module named 'kernels'" in done.stderr, done.stderr


def test_t4dm_kernels_and_transformers_models_import_from_the_root():
    pytest.importorskip("transformers")
    pytest.importorskip("triton")
    done = _run(
        "import transformers.modeling_utils, t4dm.kernels as k, sys; "
        "print(k.lif_multistep.__module__, sorted(m for m in sys.modules if m.startswith('kernels.lif')))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0].startswith("t4dm.kernels.lif") and done.stdout.rstrip().endswith("[]")


def test_the_bitsandbytes_hub_kernel_notice_is_dropped_and_nothing_else():
    import logging

    import t4dm  # noqa: F401  (installs the filter)

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")

    def record(msg: str) -> logging.LogRecord:
        return log.makeRecord(log.name, logging.WARNING, __file__, 1, msg, (), None)

    notice = "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure ..."
    assert not log.filter(record(notice))
    assert log.filter(record("Failed to load something else"))
