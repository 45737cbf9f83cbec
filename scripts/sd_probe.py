"""The initial success detector alone: its held-out accuracy per task (docs/results.md 1f).

Runs the experiment's own bootstrap and SD training (`mtopt.experiment.bootstrap_and_sd`:
scripted bootstrap, a separate labelling fleet, `select_examples`, `SuccessDetector.fit`) and
prints the accuracy and the near-miss false-positive rate (`detector_report`) on 1,500 held-out
scripted episodes, without any RL. About 40 s per 300 labels per task on one core.

    python scripts/sd_probe.py --examples-per-task 1000 --seed 0
    python scripts/sd_probe.py --min-steps 4000          # more steps on the same labels
    python scripts/sd_probe.py --tower-stem conv2

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from mtopt.core.config import DEFAULT_TOWER_STEM, TOWER_STEMS
from mtopt.experiment import ExperimentConfig, bootstrap_and_sd
from mtopt.tasks import TaskCatalogue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples-per-task", type=int, default=ExperimentConfig.sd_examples_per_task)
    parser.add_argument("--min-steps", type=int, default=ExperimentConfig.sd_min_steps, help="SD gradient steps, at least")
    parser.add_argument("--tower-stem", choices=list(TOWER_STEMS), default=DEFAULT_TOWER_STEM)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = ExperimentConfig(seed=args.seed)
    cfg = dataclasses.replace(base, sd_examples_per_task=args.examples_per_task, sd_min_steps=args.min_steps,
                              algo=dataclasses.replace(base.algo, tower_stem=args.tower_stem))
    t0 = time.time()
    _, _, report = bootstrap_and_sd(cfg, TaskCatalogue.load(), lambda m: print(m, flush=True))
    accuracy = {task: round(v["accuracy"], 3) for task, v in report["sd"].items()}
    print(json.dumps({
        "examples_per_task": args.examples_per_task, "min_steps": args.min_steps, "tower_stem": args.tower_stem,
        "seed": args.seed, "labels": report["sd_examples"], "wall_s": round(time.time() - t0),
        "mean_accuracy": round(sum(accuracy.values()) / len(accuracy), 3), "accuracy": accuracy,
        "tpr": {task: round(v["tpr"], 3) for task, v in report["sd"].items()},
        "near_miss_fpr": {task: None if v["near_miss_fpr"] is None else round(v["near_miss_fpr"], 3)
                          for task, v in report["sd"].items()},
    }), flush=True)


if __name__ == "__main__":
    main()
