#!/usr/bin/env bash
# The one GPU check: GPU tests and GPU benchmarks in one call on the lent machine, printing as it goes. From the
# repository root, with the wheels the GPU image lacks carried (peers, bitsandbytes, faiss-cpu, crc32c):
#
#   make gpu-wheels                                   # here, once: .wheels/ (git-ignored, ~27 MiB)
#   run(command="bash scripts/gpu_check.sh all", carry=[".wheels"], timeout_s=600)
#
# Parts: lif (issue 4), attention (issue 5), stack (issue 6), qwen (issue 7), or all, in that order. Each part
# writes $OUT/<part>.log and $OUT/<part>.json: 8 files for all four, as many as a call brings back. BUDGET
# (seconds, default 570) is a deadline for the whole call: every step's limit is cut to end before it, and what
# cannot start in time is skipped and named, so a slow part costs the later ones time but never the whole
# call's output. In `all`, the optional steps (the LIF small-shape tests) are off unless SMALL=1.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
export T4DM_GPU_DEADLINE=$(($(date +%s) + ${BUDGET:-570}))
part="${1:-all}"
case $part in
    lif | attention | stack | qwen) parts=("$part") ;;
    all) parts=(lif attention stack qwen); export SMALL="${SMALL:-0}" ;;
    *) echo "unknown part '$part': lif, attention, stack, qwen or all" >&2; exit 2 ;;
esac
status=0
summary=()
for p in "${parts[@]}"; do
    start=$(date +%s)
    bash "scripts/gpu_$p.sh"
    rc=$?
    ((rc == 0)) || status=1
    summary+=("$p rc=$rc in $(($(date +%s) - start)) s")
done
echo "== gpu_check: ${summary[*]}"
ls -l "$OUT"
exit $status
