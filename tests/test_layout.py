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
    done = _run("import kernels, os; print(kernels.__file__ and os.path.abspath(kernels.__file__))")
    if installed:
        assert done.returncode == 0, done.stderr
        where = done.stdout.strip()
        assert not where.startswith(os.path.join(ROOT, "kernels") + os.sep), where
        assert "site-packages" in where or "dist-packages" in where, where
    else:
        assert done.returncode == 0 and done.stdout.strip() == "None", done.stderr
        _assert_reads_as_not_installed(_run(_NOT_INSTALLED_CHECKS))


# Hide the installed package (its files from this folder's hand-on, which looks with PathFinder over sys.path
# less the root; its metadata from transformers), as on the GPU image: transformers 5.17, no `kernels` package.
_HIDE_INSTALLED = """
import importlib.machinery as m, importlib.metadata as md
_find, _version = m.PathFinder.find_spec, md.version
m.PathFinder.find_spec = classmethod(
    lambda cls, name, path=None, target=None: None if name == "kernels" and path else _find(name, path, target)
)
def _no_kernels(name):
    if name == "kernels":
        raise md.PackageNotFoundError(name)
    return _version(name)
md.version = _no_kernels
"""
_NOT_INSTALLED_CHECKS = """
import kernels
print(kernels.__file__, hasattr(kernels, "__version__"), [n for n in dir(kernels) if not n.startswith("__")])
try:
    from kernels import get_kernel
except ImportError as e:
    print("ImportError", e)
try:
    import kernels.lif
except ModuleNotFoundError as e:
    print("ModuleNotFoundError", e.name)
from transformers.utils.import_utils import _is_package_available
print("available", _is_package_available("kernels", return_version=True)[0])
"""


def _assert_reads_as_not_installed(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "None False []", lines
    assert lines[1].startswith("ImportError cannot import name 'get_kernel'"), lines
    assert lines[2] == "ModuleNotFoundError kernels.lif", lines
    assert lines[3] == "available False", lines


def test_without_the_installed_package_the_folder_reads_as_not_installed():
    # transformers finds the folder with find_spec, then imports it to read a version: it must see a stray
    # folder (no file, no version), not fail and not find t4dm's kernels under the name
    pytest.importorskip("transformers")
    _assert_reads_as_not_installed(_run(_HIDE_INSTALLED + _NOT_INSTALLED_CHECKS))


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
