#!/usr/bin/env bash
# GPU check of the spike-attention and RWKV-6 kernels (issue 5), from the repository root on the lent machine:
#
#     make gpu-wheels                                                   # here, once: .wheels/ (git-ignored)
#     run(command="bash scripts/gpu_attention.sh", carry=[".wheels"], timeout_s=600)
#
# 1. the @pytest.mark.gpu tests (one autotune config per kernel: they check numbers, not speed), 2. the
# benchmark beside flash-linear-attention (from the carried wheel) and SDPA: bf16, B=8, T=2048, H=16, K=D=64,
# and the T curve ($OUT/attention.json). SWEEP=1 adds our chunk-size / value-block sweep; FLA_MAX_CONFIGS
# (default 4, 0 = all) bounds fla's first-use autotuning. SMALL=1 adds the small-shape tests on CUDA.
# Everything printed goes to $OUT/attention.log too (set-up in scripts/gpu_common.sh).
source "$(dirname "$0")/gpu_common.sh"
gpu_setup attention
T4DM_AUTOTUNE=0 step gpu-tests "${TESTS_TIMEOUT:-300}" "$PY" -u -m pytest "${WORKERS[@]}" -q -rfE -m gpu \
    -p no:cacheprovider tests/kernels/test_rwkv.py tests/kernels/test_spike_attention.py
sweep_flag=--no-sweep
[[ ${SWEEP:-0} == 1 ]] && sweep_flag=
step bench "${BENCH_TIMEOUT:-420}" "$PY" -u -m t4dm.bench.attention --device "$DEVICE" \
    --fla-max-configs "${FLA_MAX_CONFIGS:-4}" $sweep_flag --json "$OUT/attention.json" ${ATTENTION_ARGS:-}
if [[ ${SMALL:-0} == 1 ]]; then
    T4DM_AUTOTUNE=0 step small-tests "${SMALL_TIMEOUT:-300}" "$PY" -u -m pytest "${WORKERS[@]}" -q -rfE -m "not gpu" \
        -p no:cacheprovider tests/kernels/test_rwkv.py tests/kernels/test_spike_attention.py
fi
exit "$STATUS"
