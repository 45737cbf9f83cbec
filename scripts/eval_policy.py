"""Evaluate a Q-network saved by `mtopt experiment` (RUN/q.pt) with the greedy CEM policy.

The same evaluation as the experiment's (fresh scenes, ground-truth success, 4 steps), with more
episodes per task and the search settings as flags, so that one network can be scored under
several searches on the same scenes (docs/results.md 1l):

    python scripts/eval_policy.py runs/flat-s0 --episodes 200                          # the policy's search
    python scripts/eval_policy.py runs/flat-s0 --episodes 200 --init-mean 0,0,0,0      # first population centred on 0
    python scripts/eval_policy.py runs/flat-s0 --episodes 200 --samples 256

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from mtopt.collect import Fleet
from mtopt.core.config import MTOptConfig
from mtopt.core.policy import CEMPolicy
from mtopt.experiment import ExperimentConfig, evaluate_policy, load_saved_q_network
from mtopt.robot import CEM_INITIAL_MEAN
from mtopt.tasks import TaskCatalogue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an `mtopt experiment --out` directory with q.pt")
    parser.add_argument("--episodes", type=int, default=200, help="episodes per task")
    parser.add_argument("--samples", type=int, default=MTOptConfig.cem_samples, help="CEM samples per iteration")
    parser.add_argument("--init-mean", default=",".join(map(str, CEM_INITIAL_MEAN)),
                        help="centre of the first CEM population, one value per action coordinate")
    parser.add_argument("--seed", type=int, default=12345, help="scene seed (same scenes for the same seed)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    catalogue = TaskCatalogue.load()
    init_mean = tuple(float(v) for v in args.init_mean.split(","))
    q, algo = load_saved_q_network(args.run)
    policy = CEMPolicy(q, dataclasses.replace(algo, cem_samples=args.samples), seed=0, init_mean=init_mean)
    t0 = time.time()
    rates = evaluate_policy(Fleet(catalogue, 128, args.seed), catalogue, lambda i, s, t: policy.batch(i, s, t)[0],
                      ExperimentConfig(eval_episodes_per_task=args.episodes))
    for name, rate in rates.items():
        print(f"{name:20s} {rate:.3f}")
    print(json.dumps({"run": str(args.run), "episodes_per_task": args.episodes, "samples": args.samples,
                      "init_mean": init_mean, "mean_success": round(float(np.mean(list(rates.values()))), 3),
                      "seconds": round(time.time() - t0, 1), "tasks": {k: round(v, 3) for k, v in rates.items()}}))


if __name__ == "__main__":
    main()
