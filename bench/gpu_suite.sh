#!/usr/bin/env bash
# The GPU benchmark suite, for a short session on a GPU machine where the package is not
# installed (run from a checkout; PYTHONPATH=services:robot_agent is set here).
#
#   bash bench/gpu_suite.sh OUTDIR
#
# Prints the GPU (nvidia-smi -L), Python and torch versions (also in OUTDIR/env.log), then runs,
# one after the other, each under `timeout`:
#   bellman_targets.py --device cuda   (full mode: batched targets on the GPU, batch 1024)
#   trainer_steps.py   --device cuda   (trainer SGD steps/s, batch 128 and 1024)
#   cem_policy.py      --quick         (robot-side CEM latency, CPU)
# Each bench's output goes to the terminal and OUTDIR/<bench>.log; its last JSON line is appended
# to OUTDIR/gpu_bench.jsonl (appended: use a fresh OUTDIR per run). A bench that fails or times out appends
# {"bench": ..., "error": ..., "rc": ...} instead, and the suite goes on with the next one.
# Exit status: the number of benches that failed.
#
# Time: ~2 minutes expected; the whole suite is capped at SUITE_BUDGET_S (default 210 s): each
# bench's timeout is the smaller of its own cap and the budget left.
#
# Environment:
#   PYTHON=...      interpreter (default: python3, else python)
#   DEVICE=cpu      try the suite without a GPU (every bench with --device cpu and --quick)
#   QUICK=1|0       force --quick on/off for every bench (default: on only with DEVICE=cpu)
#   SUITE_BUDGET_S  overall time cap in seconds (default 210)

set -u -o pipefail

OUT=${1:?usage: bash bench/gpu_suite.sh OUTDIR}
DEVICE=${DEVICE:-cuda}
if [[ -z "${QUICK:-}" ]]; then
    if [[ "$DEVICE" == "cpu" ]]; then QUICK=1; else QUICK=0; fi
fi
PY=${PYTHON:-$(command -v python3 || command -v python)}
BUDGET=${SUITE_BUDGET_S:-210}

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 100
export PYTHONPATH="services:robot_agent${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" || exit 100
JSONL="$OUT/gpu_bench.jsonl"
START=$SECONDS
FAILED=0
QFLAG=()
[[ "$QUICK" == "1" ]] && QFLAG=(--quick)

{
    echo "gpu_suite: $(date -u +%Y-%m-%dT%H:%M:%SZ) host=$(hostname) device=$DEVICE quick=$QUICK budget=${BUDGET}s"
    if git rev-parse --short HEAD >/dev/null 2>&1; then
        echo "git: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- bench services robot_agent || echo ' (modified)')"
    fi
    if command -v nvidia-smi >/dev/null; then nvidia-smi -L 2>&1; else echo "nvidia-smi: not found"; fi
    "$PY" -c 'import os, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cuda_available", torch.cuda.is_available(), "cpus", len(os.sched_getaffinity(0)))
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", "cudnn", torch.backends.cudnn.version())' 2>&1
} | tee "$OUT/env.log"

# run_bench NAME CAP_SECONDS ARGS...: one bench, output teed to OUTDIR/NAME.log, last JSON line appended
run_bench() {
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    local limit=$((cap < left ? cap : left))
    local log="$OUT/$name.log"
    if ((limit < 15)); then
        echo "gpu_suite: $name skipped (suite budget of ${BUDGET}s spent)" | tee "$log"
        echo "{\"bench\": \"$name\", \"error\": \"skipped: suite budget spent\", \"rc\": null}" >>"$JSONL"
        FAILED=$((FAILED + 1))
        return
    fi
    echo "=== $name (timeout ${limit}s): $PY bench/$name.py $*"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$PY" "bench/$name.py" "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local line
    line=$(grep -E '^\{"bench": ' "$log" | tail -n 1)
    if ((rc == 0)) && [[ -n "$line" ]]; then
        echo "$line" >>"$JSONL"
        echo "=== $name: ok in $((SECONDS - t0)) s"
    else
        local why="exit status $rc"
        ((rc == 124 || rc == 137)) && why="timed out after ${limit}s"
        [[ $rc -eq 0 ]] && why="no JSON line"
        echo "{\"bench\": \"$name\", \"error\": \"$why\", \"rc\": $rc, \"log\": \"$log\"}" >>"$JSONL"
        echo "=== $name: FAILED ($why) after $((SECONDS - t0)) s; see $log"
        FAILED=$((FAILED + 1))
    fi
}

run_bench bellman_targets 110 --device "$DEVICE" ${QFLAG[@]+"${QFLAG[@]}"}
run_bench trainer_steps 90 --device "$DEVICE" ${QFLAG[@]+"${QFLAG[@]}"}
run_bench cem_policy 60 --quick

echo "=== gpu_suite: done in $((SECONDS - START)) s, $FAILED failed; results in $JSONL:"
cat "$JSONL"
exit "$FAILED"
