"""Fetch, here, every wheel the GPU machine lacks, into one folder to carry there (``make gpu-wheels``).

The GPU machine has no network and its own image (Python 3.12, torch 2.11+cu130; the package list in the
device library's KINDS.md). It lacks the peers (flash-linear-attention, SpikingJelly), bitsandbytes, and three
of T4DX's own dependencies (faiss-cpu, crc32c, snowballstemmer): without them the unified-model check cannot
open a store. A call carries at most 64 MiB with the working tree, and bitsandbytes' wheel alone is 43 MB, most
of it builds for other CUDA versions and for ROCm: its copy here keeps the CPU and CUDA 13 libraries only
(RECORD rewritten to match). Usage::

    python scripts/gpu_wheels.py [--dest .wheels] [--python-version 3.12]

prints the folder's size and fails if it is over ``--max-mib``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

# name==version as constraints.txt pins them (T4DX's own), or as the benchmarks compare against (the peers)
PURE = ["fla-core==0.6.0", "spikingjelly==2.0.0", "loguru==0.7.3", "snowballstemmer==3.1.1"]
BINARY = ["bitsandbytes==0.50.2", "faiss-cpu==1.15.1", "crc32c==2.9.post0"]
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34)] + ["manylinux2014_x86_64"]
# bitsandbytes' native libraries the GPU image can load: torch there is built for CUDA 13.0
KEEP_BNB_LIB = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")


def download(specs: list[str], dest: Path, python_version: str, binary: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest), *specs]
    if binary:
        cmd += ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
    subprocess.run(cmd, check=True)


def slim_bitsandbytes(wheel: Path) -> None:
    """Rewrite ``wheel`` without the native libraries the GPU image cannot use."""
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {
            name
            for name in src.namelist()
            if name.startswith("bitsandbytes/libbitsandbytes_") and not KEEP_BNB_LIB.search(name)
        }
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if line.split(",", 1)[0] not in dropped).encode()
            dst.writestr(info, data)
    slim.replace(wheel)
    print(f"bitsandbytes: dropped {len(dropped)} native libraries for other CUDA / ROCm / XPU builds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=Path(".wheels"))
    parser.add_argument("--python-version", default="3.12", help="the GPU image's Python (3.12)")
    parser.add_argument("--max-mib", type=float, default=56.0, help="with the working tree: 64 MiB a call")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    download(PURE, args.dest, args.python_version, binary=False)
    download(BINARY, args.dest, args.python_version, binary=True)
    for wheel in args.dest.glob("bitsandbytes-*.whl"):
        slim_bitsandbytes(wheel)
    wheels = sorted(args.dest.glob("*.whl"))
    names = [re.split(r"-\d", w.name, maxsplit=1)[0].lower() for w in wheels]
    twice = {n for n in names if names.count(n) > 1}
    if twice:  # two versions of one package stop the whole install there
        print(
            f"more than one wheel of {sorted(twice)} in {args.dest}: remove the stale ones", file=sys.stderr
        )
        return 1
    size = sum(w.stat().st_size for w in wheels) / 2**20
    for wheel in wheels:
        print(f"  {wheel.stat().st_size / 2**20:6.1f} MiB  {wheel.name}")
    print(f"{len(wheels)} wheels, {size:.1f} MiB in {args.dest}")
    if size > args.max_mib:
        print(
            f"over {args.max_mib} MiB: the call would not carry them with the working tree", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
