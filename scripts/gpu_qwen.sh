#!/usr/bin/env bash
# GPU check of the unified model (issue 7), from the repository root on the lent GPU machine:
#
#     make gpu-wheels                                                   # here, once: .wheels/ (git-ignored)
#     run(command="bash scripts/gpu_qwen.sh", carry=[".wheels"], timeout_s=600)
#
# bitsandbytes, faiss-cpu, crc32c and snowballstemmer are not on the GPU image: they travel in .wheels.
# 1. tests/qwen/test_nf4.py on CUDA (tiny random models: load, exact zero-init equivalence, QLoRA gradients,
#    cached generation, checkpoints, phase 1 under bf16 autocast), about a minute;
# 2. python -m t4dm.bench.qwen: random Qwen2.5-3B weights written locally, loaded in NF4; the plain NF4 model's
#    prefill (2,048 tokens) and decoding tokens/s beside the unified model's (stack after layer 17, LoRA, T4DX
#    memory), peak memory for generation (target <= 10 GiB) and for one training step at 2,048 tokens (target
#    <= 16 GiB) ($OUT/qwen.json). Writing and loading the 3B checkpoint take a minute or two.
# Everything printed goes to $OUT/qwen.log too (set-up in scripts/gpu_common.sh).
source "$(dirname "$0")/gpu_common.sh"
gpu_setup qwen
step nf4-tests "${TEST_TIMEOUT:-120}" "$PY" -u -m pytest tests/qwen/test_nf4.py -q -rfE -p no:cacheprovider
step bench "${BENCH_TIMEOUT:-420}" "$PY" -u -m t4dm.bench.qwen --device "$DEVICE" --json "$OUT/qwen.json" --workdir /tmp ${QWEN_ARGS:-}
exit "$STATUS"
