#!/usr/bin/env bash
# Learning runs on a GPU machine, several at once (one GPU, 16 cores): the full method on all
# 13 tasks (two seeds; batch 512 at two learning rates) and the same budget without the
# success-detector refresh, at a budget the 2-core development box cannot reach.
#
#   bash scripts/gpu_experiments.sh OUTDIR [TIME_LIMIT_S] [compare|long|single|sd|stem]
#
# `single` gives the whole machine to one run of the full method (seed 0, evaluated every 100
# iterations). Measured on an H200 (docs/results.md 1a): one run alone got 49 train steps/s, two
# at once 54 each, so the loop is bound per process and a set of 2-3 runs costs no more device
# time than one. `sd` compares the initial SD's training length; `stem` runs the conv2 tower
# stem (docs/results.md 1e) on two seeds next to the default.
#
# Runs from the repository root with the package on PYTHONPATH (no install needed where torch,
# numpy, opencv, pyyaml, tqdm and matplotlib are present). Each run stops its RL loop after
# TIME_LIMIT_S seconds (default 300) and then evaluates; results.json records the steps and
# episodes it reached. Results land in OUTDIR/<run>/ and OUTDIR/<run>.log.
set -u
out=${1:?usage: gpu_experiments.sh OUTDIR [TIME_LIMIT_S] [compare|long|single|sd|stem]}
limit=${2:-300}
mkdir -p "$out"
export PYTHONPATH="$PWD/services:$PWD/robot_agent${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
device=${DEVICE:-cuda}
common=(--device "$device" --iterations 5000 --time-limit "$limit" --eval-every 25 --eval-episodes 30
        --sd-refresh-every 10 --threads 2 --no-progress)
run() {
  local name=$1; shift
  python3 -m mtopt.cli experiment --out "$out/$name" "${common[@]}" "$@" >"$out/$name.log" 2>&1
  echo "$name: exit $? $(tail -n 1 "$out/$name.log" | cut -c1-300)"
}
case "${3:-compare}" in
  compare)  # what the SD refresh and the batch size change, at the same wall-clock budget
    run full-s0 --seed 0 &
    run full-s1 --seed 1 &
    run full-b512-s0 --seed 0 --batch-size 512 &
    run full-b512-lr3e-4-s0 --seed 0 --batch-size 512 --learning-rate 3e-4 &
    run no-sd-refresh-s0 --seed 0 --sd-refresh-every 0 --sd-random-fraction 0 &
    ;;
  long)  # fewer runs at once, so each gets more steps in the same time
    run full-s0 --seed 0 &
    run full-s1 --seed 1 &
    run full-b512-s0 --seed 0 --batch-size 512 &
    run full-b512-labels20-s1 --seed 1 --batch-size 512 --sd-refresh-labels 20 &
    ;;
  single)  # one run with the whole machine: the most train steps one device session allows
    run full-s0 --seed 0 --eval-every 100 &
    ;;
  sd)  # does a longer-trained initial SD (same labels, 4,000 instead of 1,500 steps) learn faster?
    run full-s0 --seed 0 --eval-every 50 &
    run sd4000-s0 --seed 0 --eval-every 50 --sd-min-steps 4000 &
    ;;
  stem)  # the conv2 tower stem (docs/results.md 1e) on all 13 tasks, two seeds, against the default;
         # one run alone is not faster than three at once (the loop is bound per process)
    run conv2-s0 --seed 0 --tower-stem conv2 &
    run conv2-s1 --seed 1 --tower-stem conv2 &
    run patch4-s0 --seed 0 &
    ;;
  *) echo "unknown run set ${3}; use compare, long, single, sd or stem" >&2; exit 2 ;;
esac
wait
