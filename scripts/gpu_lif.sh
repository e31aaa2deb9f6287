#!/usr/bin/env bash
# GPU check of the fused LIF kernel (issue 4), in one call on the lent GPU machine, from the repository root:
#
#     bash scripts/gpu_lif.sh            # logs and JSON go to $OUT (the device tool's folder), else ./gpu-out
#
# 1. the GPU tests (large shapes, every surrogate on the time-parallel path), 2. the benchmark (ours, SpikingJelly,
# an eager loop; JSON), 3. the small-shape tests compiled on the GPU. Each step has its own `timeout`, so a hang
# in one still leaves the others' output. Budget: about 2 + 3 + 4 minutes, most of it Triton compiling variants.
#
# SpikingJelly is not on the GPU image and the machine has no network: carry its wheels to compare with it. Here,
# once: python3 -m pip download --no-deps -d .wheels spikingjelly==2.0.0 loguru (.wheels/ is git-ignored)
# then run this script with carry=[".wheels"]. Without them the benchmark says SpikingJelly was skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

if compgen -G ".wheels/spikingjelly-*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .wheels/spikingjelly-*.whl .wheels/loguru-*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# t4dm maps t4dm.kernels onto kernels/ (pyproject package-dir): an editable install needs no network
if ! "$PY" -c "import t4dm.kernels.lif" 2>/dev/null; then
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip_install.log" 2>&1 \
        || echo "editable install failed: see $OUT/pip_install.log"
fi
"$PY" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name())" \
    | tee "$OUT/gpu_lif_env.txt"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv >>"$OUT/gpu_lif_env.txt" 2>&1 || true

# test processes: pytest-xdist (in the image) compiles the many kernel variants on several cores at once
WORKERS=()
"$PY" -c "import xdist" 2>/dev/null && WORKERS=(-n "${TEST_WORKERS:-8}")
timeout 240 "$PY" -u -m pytest "${WORKERS[@]}" tests/kernels/test_lif.py -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_lif_tests.log"
tests_rc=${PIPESTATUS[0]}

timeout 200 "$PY" -u -m t4dm.bench.lif --device cuda --json "$OUT/bench_lif.json" ${LIF_SWEEP:+--sweep} 2>&1 \
    | tee "$OUT/bench_lif.log"
bench_rc=${PIPESTATUS[0]}

timeout 240 "$PY" -u -m pytest "${WORKERS[@]}" tests/kernels/test_lif.py -m "not gpu" -q -p no:cacheprovider 2>&1 \
    | tee "$OUT/gpu_lif_small_tests.log"
small_rc=${PIPESTATUS[0]}

echo "gpu tests rc=$tests_rc | benchmark rc=$bench_rc | small-shape tests on GPU rc=$small_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$small_rc" -eq 0 ]
