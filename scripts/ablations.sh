#!/usr/bin/env bash
# The ablation suite of docs/results.md: the same small budget for every configuration.
# Usage: bash scripts/ablations.sh [seed ...]   (default: seed 0); results in runs/ablation-*/
set -euo pipefail
cd "$(dirname "$0")/.."
MTOPT=${MTOPT:-.venv/bin/mtopt}
TASKS=${TASKS:-lift-red,lift-blue,place-any,present-any}
COMMON=(--tasks "$TASKS" --bootstrap-episodes 800 --sd-examples-per-task 150 --iterations 16
        --episodes-per-iteration 32 --train-steps-per-iteration 40 --eval-every 8 --eval-episodes 30
        --threads "${THREADS:-1}" --no-progress)
for seed in "${@:-0}"; do
  $MTOPT experiment "${COMMON[@]}" --seed "$seed" --out "runs/ablation-skill-s$seed"
  $MTOPT experiment "${COMMON[@]}" --seed "$seed" --impersonation orig --out "runs/ablation-orig-s$seed"
  $MTOPT experiment "${COMMON[@]}" --seed "$seed" --impersonation all --out "runs/ablation-all-s$seed"
  $MTOPT experiment "${COMMON[@]}" --seed "$seed" --no-rebalance --out "runs/ablation-norebalance-s$seed"
  $MTOPT experiment "${COMMON[@]}" --seed "$seed" --multi-head --out "runs/ablation-multihead-s$seed"
  $MTOPT experiment "${COMMON[@]}" --seed "$seed" --single-task --out "runs/ablation-single-s$seed"
done
${PYTHON:-.venv/bin/python} scripts/ablation_table.py runs/ablation-*/results.json
