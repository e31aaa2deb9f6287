#!/usr/bin/env bash
# GPU check of the spiking cortical stack (issue 6), in one call on the lent GPU machine, from the repository root:
#
#     run(command="bash scripts/gpu_stack.sh", timeout_s=600)     # logs and JSON under $OUT, else ./gpu-out
#
# Phases (PHASE=all by default; or "gpu-tests", "bench"):
# 1. gpu-tests: tests/spiking/test_gpu.py (blocks on the Triton kernels vs the same blocks on the naive references,
#    streaming with the fused step kernels, the issue's width in bfloat16, the CUDA-graph StackDecoder against plain
#    steps and its time per token), T4DM_AUTOTUNE=0 (one config per kernel:
#    the tests check numbers, not speed). Limit TESTS_TIMEOUT (default 240 s), most of it Triton compiling.
# 2. bench: python -m t4dm.bench.stack --device cuda (six blocks, B=8, T=2048, d=1024, bf16: fwd, fwd+bwd and a
#    decoding step, ours beside the naive references; JSON). Limit BENCH_TIMEOUT (default 330 s): the naive
#    references walk the LIF loop token by token (seconds per call).
# Each phase has its own `timeout`, so a hang in one still leaves the other's output.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
PHASE="${PHASE:-all}"
export PYTHONUNBUFFERED=1

"$PY" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name())" \
    | tee "$OUT/gpu_stack_env.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv >>"$OUT/gpu_stack_env.txt" 2>&1 || true

# t4dm maps t4dm.kernels onto kernels/ (pyproject package-dir): an editable install needs no network
if ! "$PY" -c "import t4dm.kernels, t4dm.spiking, t4dm.learning" 2>/dev/null \
    && ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip_install.log" 2>&1; then
    # no usable setuptools: map t4dm.kernels / t4dm.storage onto their folders with a meta-path finder
    echo "editable install failed ($(tail -1 "$OUT/pip_install.log")); using an import shim"
    mkdir -p /tmp/t4dm_shim
    cat >/tmp/t4dm_shim/sitecustomize.py <<PYEOF
import importlib.util, sys
_MAP = {"t4dm.kernels": "$PWD/kernels", "t4dm.storage": "$PWD/storage"}
class _T4DMFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name in _MAP:
            return importlib.util.spec_from_file_location(
                name, _MAP[name] + "/__init__.py", submodule_search_locations=[_MAP[name]])
        return None
sys.meta_path.insert(0, _T4DMFinder)
PYEOF
    export PYTHONPATH=/tmp/t4dm_shim:$PWD${PYTHONPATH:+:$PYTHONPATH}
    "$PY" -c "import t4dm.kernels, t4dm.spiking, t4dm.learning" || exit 1
fi

# test processes: pytest-xdist (in the image) compiles the many kernel variants on several cores at once
WORKERS=()
"$PY" -c "import xdist" 2>/dev/null && WORKERS=(-n "${TEST_WORKERS:-8}")
tests_rc=0
bench_rc=0
if [[ $PHASE == all || $PHASE == gpu-tests ]]; then
    T4DM_AUTOTUNE=0 timeout "${TESTS_TIMEOUT:-240}" "$PY" -u -m pytest "${WORKERS[@]}" tests/spiking/test_gpu.py -m gpu -q -rA \
        -p no:cacheprovider --junitxml="$OUT/gpu_stack_tests.xml" 2>&1 | tee "$OUT/gpu_stack_tests.log"
    tests_rc=${PIPESTATUS[0]}
fi
if [[ $PHASE == all || $PHASE == bench ]]; then
    timeout "${BENCH_TIMEOUT:-330}" "$PY" -u -m t4dm.bench.stack --device cuda --json "$OUT/bench_stack.json" 2>&1 \
        | tee "$OUT/bench_stack.log"
    bench_rc=${PIPESTATUS[0]}
fi
echo "gpu stack tests rc=$tests_rc | stack benchmark rc=$bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
