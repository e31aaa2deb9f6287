#!/usr/bin/env bash
# GPU check of the fused LIF kernel (issue 4), from the repository root on the lent GPU machine:
#
#     make gpu-wheels                                                   # here, once: .wheels/ (git-ignored)
#     run(command="bash scripts/gpu_lif.sh", carry=[".wheels"], timeout_s=600)
#
# 1. the GPU tests (large shapes, every surrogate on the time-parallel path), 2. the benchmark (ours,
# SpikingJelly 2.0 from the carried wheel, an eager loop, the bytes floor; $OUT/lif.json; LIF_SWEEP=1 adds
# launch configs of ours), 3. the small-shape tests, compiled on the GPU (SMALL=0 skips them). Everything
# printed goes to $OUT/lif.log too. Each step has its own `timeout` (set-up in scripts/gpu_common.sh).
source "$(dirname "$0")/gpu_common.sh"
gpu_setup lif
step gpu-tests "${TESTS_TIMEOUT:-240}" "$PY" -u -m pytest "${WORKERS[@]}" tests/kernels/test_lif.py -m gpu -q -rfE \
    -p no:cacheprovider
step bench "${BENCH_TIMEOUT:-200}" "$PY" -u -m t4dm.bench.lif --device "$DEVICE" --json "$OUT/lif.json" ${LIF_SWEEP:+--sweep}
if [[ ${SMALL:-1} == 1 ]]; then
    step small-tests "${SMALL_TIMEOUT:-240}" "$PY" -u -m pytest "${WORKERS[@]}" tests/kernels/test_lif.py -m "not gpu" \
        -q -rfE -p no:cacheprovider
fi
exit "$STATUS"
