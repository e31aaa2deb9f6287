#!/usr/bin/env bash
# The one GPU check: GPU tests and GPU benchmarks in one call on the lent machine, printing as it goes and
# writing logs and JSON under $OUT. From the repository root, with the peer wheels carried:
#
#   make gpu-wheels                                   # here, once: .wheels/ (git-ignored)
#   run(command="bash scripts/gpu_check.sh lif", carry=[".wheels"], timeout_s=600)
#
# Parts: lif (scripts/gpu_lif.sh: ~9 min), attention (scripts/gpu_attention.sh: ~9 min), stack
# (scripts/gpu_stack.sh: ~9 min), qwen (scripts/gpu_qwen.sh, carry=[".wheels-bnb"]: ~6 min), all (the four;
# more than one session's 15 device-minutes, so pick one part per session unless the budget allows).
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
part="${1:-lif}"
status=0
if [[ $part == lif || $part == all ]]; then
    echo "== LIF kernel (issue 4)"
    bash scripts/gpu_lif.sh || status=1
fi
if [[ $part == attention || $part == all ]]; then
    echo "== RWKV-6 and spike attention kernels (issue 5)"
    bash scripts/gpu_attention.sh || status=1
fi
if [[ $part == stack || $part == all ]]; then
    echo "== spiking cortical stack (issue 6)"
    bash scripts/gpu_stack.sh || status=1
fi
if [[ $part == qwen || $part == all ]]; then
    echo "== unified model: Qwen2.5-3B NF4 + stack (issue 7)"
    bash scripts/gpu_qwen.sh || status=1
fi
exit $status
