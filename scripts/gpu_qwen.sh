#!/usr/bin/env bash
# GPU check of the unified model (issue 7), in one call on the lent GPU machine, from the repository root:
#
#     make gpu-wheels                                                   # here, once: .wheels-bnb/ (git-ignored)
#     run(command="bash scripts/gpu_qwen.sh", carry=[".wheels-bnb"], timeout_s=600)
#
# bitsandbytes is not on the GPU image: its wheel (43 MB) travels in .wheels-bnb and is installed into
# /tmp/site. Then python -m t4dm.bench.qwen: random Qwen2.5-3B weights written locally, loaded in NF4; the plain
# NF4 model's prefill (2,048 tokens) and decoding tokens/s beside the unified model's (stack after layer 17,
# LoRA, T4DX memory), peak memory for generation (target <= 10 GiB) and for one training step at 2,048
# tokens (target <= 16 GiB). Before it, tests/qwen/test_nf4.py on CUDA (TEST_TIMEOUT, default 120 s). JSON
# and logs under $OUT. Limit BENCH_TIMEOUT (default 420 s): writing and loading the 3B checkpoint take a
# minute or two.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

"$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '|', torch.cuda.get_device_name())" \
    | tee "$OUT/gpu_qwen_env.txt"
if compgen -G ".wheels-bnb/bitsandbytes-*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .wheels-bnb/bitsandbytes-*.whl >"$OUT/pip_bnb.log" 2>&1 || echo "bitsandbytes install failed: $OUT/pip_bnb.log"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)" || echo "no bitsandbytes: the NF4 load will fail"
if ! "$PY" -c "import t4dm.qwen, t4dm.storage" 2>/dev/null; then
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip_install.log" 2>&1 \
        || echo "editable install failed: see $OUT/pip_install.log"
fi

# 1. the NF4 path's tests on CUDA (tiny random models: load, exact zero-init equivalence, QLoRA gradients,
#    cached generation, checkpoints, phase 1 under bf16 autocast), about a minute
timeout "${TEST_TIMEOUT:-120}" "$PY" -u -m pytest tests/qwen/test_nf4.py -q -p no:cacheprovider \
    --junitxml="$OUT/nf4_tests.xml" 2>&1 | tee "$OUT/nf4_tests.log"
echo "NF4 tests rc=${PIPESTATUS[0]}"

# 2. the benchmark
timeout "${BENCH_TIMEOUT:-420}" "$PY" -u -m t4dm.bench.qwen --device cuda --json "$OUT/bench_qwen.json" \
    --workdir /tmp 2>&1 | tee "$OUT/bench_qwen.log"
rc=${PIPESTATUS[0]}
echo "unified-model benchmark rc=$rc"
exit "$rc"
