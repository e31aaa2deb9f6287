#!/usr/bin/env bash
# GPU check for the spike-attention and RWKV-6 kernels (issue 5): the GPU tests, then the benchmark beside
# flash-linear-attention and SDPA. Logs and JSON go to $OUT (the device tool's output folder).
#
# From the repository root on the lent GPU machine, carrying the fla wheel (git-ignored):
#   run(command="bash scripts/gpu_attention.sh", carry=[".wheels"], timeout_s=600)
# Phases (PHASE=all by default): "gpu-tests" (the @pytest.mark.gpu tests), "bench", "cpu-tests" (the
# small-shape tests, here on CUDA). Time limits per phase: TESTS_TIMEOUT, BENCH_TIMEOUT (seconds).
# SWEEP=1 adds our chunk-size / value-block sweep to the benchmark; FLA_MAX_CONFIGS (default 4, 0 = all)
# bounds fla's first-use autotuning.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/t4dm-gpu-attention}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
PHASE=${PHASE:-all}
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"

# the package itself, without dependencies (the image has torch and triton; storage deps are not needed)
if ! $PY -c "import t4dm.kernels" 2>/dev/null \
    && ! $PY -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1; then
    # no usable setuptools: map t4dm.kernels / t4dm.storage onto the folders with a meta-path finder
    echo "editable install failed ($(tail -1 "$OUT/install.log")); using an import shim"
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
    $PY -c "import t4dm.kernels.rwkv, t4dm.kernels.spike_attention" || exit 1
fi
# flash-linear-attention's kernels (fla-core) from the carried wheel; the benchmark skips fla without it
if ls .wheels/fla_core-*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/fla_site .wheels/fla_core-*.whl \
        && export PYTHONPATH=/tmp/fla_site${PYTHONPATH:+:$PYTHONPATH}
else
    echo "no .wheels/fla_core-*.whl: fla rows will be skipped (pip download --no-deps -d .wheels fla-core)"
fi

# test processes: pytest-xdist (in the image) compiles the many kernel variants on several cores at once
WORKERS=()
"$PY" -c "import xdist" 2>/dev/null && WORKERS=(-n "${TEST_WORKERS:-8}")
status=0
if [[ $PHASE == all || $PHASE == gpu-tests ]]; then
    # one autotune config per kernel: the tests check numbers, not speed, and compile 3 dtypes x shapes
    T4DM_AUTOTUNE=0 timeout "${TESTS_TIMEOUT:-300}" $PY -m pytest "${WORKERS[@]}" -q -m gpu -p no:cacheprovider \
        tests/kernels/test_rwkv.py tests/kernels/test_spike_attention.py \
        --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log"
    status=$(( status || PIPESTATUS[0] ))
fi
if [[ $PHASE == all || $PHASE == bench ]]; then
    sweep_flag=--no-sweep
    [[ ${SWEEP:-0} == 1 ]] && sweep_flag=
    timeout "${BENCH_TIMEOUT:-420}" $PY -u -m t4dm.bench.attention --device cuda \
        --fla-max-configs "${FLA_MAX_CONFIGS:-4}" $sweep_flag \
        --json "$OUT/attention_bench.json" 2>&1 | tee "$OUT/attention_bench.log"
    status=$(( status || PIPESTATUS[0] ))
fi
if [[ $PHASE == cpu-tests ]]; then
    T4DM_AUTOTUNE=0 timeout "${TESTS_TIMEOUT:-300}" $PY -m pytest "${WORKERS[@]}" -q -m "not gpu" -p no:cacheprovider \
        tests/kernels/test_rwkv.py tests/kernels/test_spike_attention.py 2>&1 | tee "$OUT/cuda_small_tests.log"
    status=$(( status || PIPESTATUS[0] ))
fi
exit $status
