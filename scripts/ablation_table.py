"""Markdown table of mean ground-truth success per experiment run.

Usage: python scripts/ablation_table.py runs/*/results.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np


def label(cfg: dict) -> str:
    algo = cfg["algo"]
    imp = "orig" if cfg["single_task"] else algo["impersonation"]
    parts = [f"impersonation={imp}", "rebalance" if algo["rebalance"] else "no-rebalance",
             "single-task" if cfg["single_task"] else "multi-task", "multi-head" if algo["multi_head"] else "one-hot"]
    return ", ".join(parts)


def main(paths: list[str]) -> None:
    rows = defaultdict(list)
    for p in paths:
        r = json.load(open(p))
        rows[label(r["config"])].append((r["config"]["seed"], r["mean_success"], r["episodes"], r["train_steps"], r["wall_s"]))
    print("| configuration | seeds | mean success (per seed) | mean | episodes | train steps |")
    print("|---|---|---|---|---|---|")
    for name, runs in sorted(rows.items(), key=lambda kv: -np.mean([x[1] for x in kv[1]])):
        per_seed = ", ".join(f"{m:.2f}" for _, m, *_ in sorted(runs))
        print(f"| {name} | {len(runs)} | {per_seed} | {np.mean([x[1] for x in runs]):.3f} | "
              f"{int(np.mean([x[2] for x in runs]))} | {int(np.mean([x[3] for x in runs]))} |")


if __name__ == "__main__":
    main(sys.argv[1:])
