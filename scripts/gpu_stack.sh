#!/usr/bin/env bash
# GPU check of the spiking cortical stack (issue 6), from the repository root on the lent GPU machine:
#
#     run(command="bash scripts/gpu_stack.sh", carry=[".wheels"], timeout_s=600)
#
# 1. tests/spiking/test_gpu.py (blocks on the Triton kernels against the same blocks on the naive references,
#    streaming with the fused step kernels, the issue's width in bfloat16, the CUDA-graph StackDecoder against
#    plain steps and its time per token), one autotune config per kernel (the tests check numbers, not speed);
# 2. python -m t4dm.bench.stack --device cuda: six blocks, B=8, T=2048, d=1024, bf16: forward, forward+backward
#    and a decoding step, ours beside the naive references ($OUT/stack.json). The naive references walk the
#    LIF loop token by token (seconds per call).
# Everything printed goes to $OUT/stack.log too (set-up in scripts/gpu_common.sh).
source "$(dirname "$0")/gpu_common.sh"
gpu_setup stack
T4DM_AUTOTUNE=0 step gpu-tests "${TESTS_TIMEOUT:-240}" "$PY" -u -m pytest "${WORKERS[@]}" tests/spiking/test_gpu.py \
    -m gpu -q -rA -p no:cacheprovider
step bench "${BENCH_TIMEOUT:-330}" "$PY" -u -m t4dm.bench.stack --device "$DEVICE" --json "$OUT/stack.json"
exit "$STATUS"
