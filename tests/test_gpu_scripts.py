"""The GPU check's plumbing, here: the wheel folder it carries and the deadline its steps run under."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gpu_wheels():
    spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "scripts" / "gpu_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bitsandbytes_keeps_only_the_libraries_the_gpu_image_loads(tmp_path: Path) -> None:
    names = [
        "bitsandbytes/__init__.py",
        "bitsandbytes/libbitsandbytes_cpu.so",
        "bitsandbytes/libbitsandbytes_cuda118.so",
        "bitsandbytes/libbitsandbytes_cuda128.so",
        "bitsandbytes/libbitsandbytes_cuda130.so",
        "bitsandbytes/libbitsandbytes_cuda132.so",
        "bitsandbytes/libbitsandbytes_rocm70.so",
        "bitsandbytes/libbitsandbytes_xpu2025.so",
    ]
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    record = "bitsandbytes-0.50.2.dist-info/RECORD"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in names:
            zf.writestr(name, name.encode())
        zf.writestr(
            record,
            "".join(f"{n},sha256={hashlib.sha256(n.encode()).hexdigest()},{len(n)}\n" for n in names)
            + f"{record},,\n",
        )
    _gpu_wheels().slim_bitsandbytes(wheel)
    kept = [
        "bitsandbytes/__init__.py",
        "bitsandbytes/libbitsandbytes_cpu.so",
        "bitsandbytes/libbitsandbytes_cuda130.so",
        "bitsandbytes/libbitsandbytes_cuda132.so",
    ]
    with zipfile.ZipFile(wheel) as zf:
        assert sorted(zf.namelist()) == sorted([*kept, record])
        assert [line.split(",")[0] for line in zf.read(record).decode().splitlines()] == [*kept, record]
        assert (
            zf.read("bitsandbytes/libbitsandbytes_cuda130.so") == b"bitsandbytes/libbitsandbytes_cuda130.so"
        )


def _steps(tmp_path: Path, script: str, deadline_in: int | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "T4DM_GPU_DEADLINE"}
    env.update(OUT=str(tmp_path), WHEELS=str(tmp_path / "none"))
    if deadline_in is not None:
        env["T4DM_GPU_DEADLINE"] = str(int(time.time()) + deadline_in)
    # `step` without gpu_setup: PART and LOG by hand
    body = (
        f'source scripts/gpu_common.sh; PART=t; LOG="$OUT/t.log"; STATUS=0\n{script}\necho "STATUS=$STATUS"'
    )
    return subprocess.run(["bash", "-c", body], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_a_step_runs_under_its_limit_and_reports_its_code(tmp_path: Path) -> None:
    done = _steps(tmp_path, "step ok 30 echo hello; step bad 30 false; step slow 1 sleep 5", None)
    assert "hello" in done.stdout
    assert "-- t/ok: rc=0" in done.stdout
    assert "-- t/bad: rc=1" in done.stdout
    assert "-- t/slow: rc=124" in done.stdout and "(timed out)" in done.stdout
    assert done.stdout.strip().endswith("STATUS=1")
    assert "hello" in (tmp_path / "t.log").read_text()  # everything printed is in the part's log too


def test_the_deadline_cuts_a_steps_limit_and_skips_what_cannot_start(tmp_path: Path) -> None:
    done = _steps(tmp_path, "step cut 500 true", 60)
    assert "(limit 55 s)" in done.stdout or "(limit 54 s)" in done.stdout, done.stdout
    assert done.stdout.strip().endswith("STATUS=0")
    done = _steps(tmp_path, "step late 500 echo ran", 10)
    assert "-- t/late: skipped" in done.stdout and "ran" not in done.stdout.split("skipped")[1]
    assert done.stdout.strip().endswith("STATUS=1")
