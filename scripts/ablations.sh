#!/usr/bin/env bash
# The ablation suite of docs/results.md: the same small budget for every configuration.
# Usage: bash scripts/ablations.sh [seed ...]   (default: seed 0); results in runs/$PREFIX-*/
# Budget per run from the environment: ITERATIONS (16), STEPS (train steps per iteration, 40),
# EPISODES (on-policy episodes per iteration, 32), BOOTSTRAP (800), EVAL_EVERY (8);
# PREFIX (ablation) names the run folders.
set -euo pipefail
cd "$(dirname "$0")/.."
MTOPT=${MTOPT:-.venv/bin/mtopt}
TASKS=${TASKS:-lift-red,lift-blue,place-any,present-any}
PREFIX=${PREFIX:-ablation}
COMMON=(--tasks "$TASKS" --bootstrap-episodes "${BOOTSTRAP:-800}" --sd-examples-per-task 150
        --iterations "${ITERATIONS:-16}" --episodes-per-iteration "${EPISODES:-32}"
        --train-steps-per-iteration "${STEPS:-40}" --eval-every "${EVAL_EVERY:-8}" --eval-episodes 30
        --threads "${THREADS:-1}" --no-progress)
for seed in "${@:-0}"; do
  $MTOPT experiment "${COMMON[@]}" --seed "$seed" --out "runs/$PREFIX-skill-s$seed"
  $MTOPT experiment "${COMMON[@]}" --seed "$seed" --impersonation orig --out "runs/$PREFIX-orig-s$seed"
  $MTOPT experiment "${COMMON[@]}" --seed "$seed" --impersonation all --out "runs/$PREFIX-all-s$seed"
  $MTOPT experiment "${COMMON[@]}" --seed "$seed" --no-rebalance --out "runs/$PREFIX-norebalance-s$seed"
  $MTOPT experiment "${COMMON[@]}" --seed "$seed" --multi-head --out "runs/$PREFIX-multihead-s$seed"
  $MTOPT experiment "${COMMON[@]}" --seed "$seed" --single-task --out "runs/$PREFIX-single-s$seed"
done
${PYTHON:-.venv/bin/python} scripts/ablation_table.py runs/"$PREFIX"-*/results.json
