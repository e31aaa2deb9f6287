# Shared set-up of the GPU check's parts (sourced by scripts/gpu_{lif,attention,stack,qwen}.sh; not run alone).
#
# - OUT: where results go (the device tool's $OUT; else ./gpu-out). A call brings back at most 8 files from it,
#   so each part writes two: $OUT/<part>.log (everything it printed) and $OUT/<part>.json (its benchmark).
# - The carried wheels (`make gpu-wheels` here: .wheels/, git-ignored) are installed once into $SITE (/tmp/site): the
#   peers, bitsandbytes, and the T4DX dependencies the GPU image lacks (faiss-cpu, crc32c, snowballstemmer).
# - t4dm itself: an editable install without dependencies, else a meta-path shim onto kernels/ and storage/.
# - T4DM_GPU_DEADLINE (epoch seconds, set by scripts/gpu_check.sh): every step's time limit is cut so that it
#   ends before it, and a step with under 20 s left is skipped and says so.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
WHEELS="${WHEELS:-.wheels}"
SITE="${SITE:-/tmp/site}"
# scripts/gpu_dryrun.sh sets DEVICE=cpu (and small benchmark shapes) to rehearse the parts here
DEVICE="${DEVICE:-cuda}"

# gpu_setup PART: start $OUT/PART.log, install the wheels and t4dm, print the versions and the GPU
gpu_setup() {
    PART=$1
    LOG="$OUT/$PART.log"
    : >>"$LOG"
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        if [[ ! -e "$SITE/.t4dm-wheels" ]]; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
                "$WHEELS"/*.whl >>"$LOG" 2>&1 && touch "$SITE/.t4dm-wheels" \
                || echo "installing $WHEELS/*.whl failed: see $LOG" | tee -a "$LOG"
        fi
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "no $WHEELS/*.whl (make gpu-wheels, then carry $WHEELS): peers and the unified model's store will be missing" \
            | tee -a "$LOG"
    fi
    if ! "$PY" -c "import t4dm.kernels, t4dm.storage" 2>/dev/null \
        && ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1; then
        echo "editable install failed (see $LOG); mapping t4dm.kernels / t4dm.storage with an import shim" | tee -a "$LOG"
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
        export PYTHONPATH="/tmp/t4dm_shim:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    {
        echo "== $PART: $(date -u +%FT%TZ)"
        "$PY" - <<'PYEOF'
import importlib
import t4dm  # noqa: F401 - drops bitsandbytes' notice about a kernel hub it cannot reach
for name in ("torch", "triton", "transformers", "peft", "bitsandbytes", "fla", "spikingjelly", "faiss"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), end=" | ")
    except Exception as error:  # noqa: BLE001 - a report of what is there
        print(name, "missing:", type(error).__name__, end=" | ")
import torch
print(torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
PYEOF
        if command -v nvidia-smi >/dev/null; then
            nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv,noheader
        fi
    } 2>&1 | tee -a "$LOG"
    # test processes: pytest-xdist (in the image) compiles the many kernel variants on several cores at once
    WORKERS=()
    "$PY" -c "import xdist" 2>/dev/null && WORKERS=(-n "${TEST_WORKERS:-8}")
    STATUS=0
}

# step NAME LIMIT COMMAND...: run COMMAND under `timeout`, at most LIMIT seconds and never past the deadline,
# printing as it goes into $LOG; a failure sets STATUS=1
step() {
    local name=$1 limit=$2 rc start
    shift 2
    if [[ -n ${T4DM_GPU_DEADLINE:-} ]]; then
        local left=$((T4DM_GPU_DEADLINE - $(date +%s) - 5))
        if ((left < 20)); then
            echo "-- $PART/$name: skipped, ${left} s left before the deadline" | tee -a "$LOG"
            STATUS=1
            return 1
        fi
        ((left < limit)) && limit=$left
    fi
    echo "-- $PART/$name (limit ${limit} s)" | tee -a "$LOG"
    start=$(date +%s)
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    echo "-- $PART/$name: rc=$rc in $(($(date +%s) - start)) s$([[ $rc == 124 ]] && echo ' (timed out)')" | tee -a "$LOG"
    ((rc == 0)) || STATUS=1
    return "$rc"
}
