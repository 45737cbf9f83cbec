"""The `mtopt` command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def _experiment(args: argparse.Namespace) -> int:
    from mtopt.core.config import MTOptConfig
    from mtopt.experiment import ExperimentConfig, run_experiment

    algo = MTOptConfig(
        impersonation=args.impersonation,
        rebalance=not args.no_rebalance,
        multi_head=args.multi_head,
        success_fraction=args.success_fraction,
        gamma=args.gamma,
        learning_rate=args.learning_rate,
    )
    cfg = ExperimentConfig(
        algo=algo,
        seed=args.seed,
        tasks=tuple(args.tasks.split(",")) if args.tasks else (),
        single_task=args.single_task,
        bootstrap_episodes=args.bootstrap_episodes,
        sd_examples_per_task=args.sd_examples_per_task,
        iterations=args.iterations,
        episodes_per_iteration=args.episodes_per_iteration,
        train_steps_per_iteration=args.train_steps_per_iteration,
        eval_every=args.eval_every,
        eval_episodes_per_task=args.eval_episodes,
        threads=args.threads,
        max_episode_steps=args.max_episode_steps,
    )
    if args.quick:
        cfg = dataclasses.replace(cfg, bootstrap_episodes=600, sd_examples_per_task=120, sd_epochs=10, sd_min_steps=200,
                                  iterations=4, eval_every=2, eval_episodes_per_task=6)
    result = run_experiment(cfg, args.out, progress=not args.no_progress)
    print(open(f"{args.out}/results.md").read() if args.out else "")
    summary = {k: result[k] for k in ("mean_success", "final_success", "episodes", "train_steps", "wall_s")}
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtopt", description="MT-Opt continuous multi-task robot learning")
    sub = parser.add_subparsers(dest="command", required=True)

    exp = sub.add_parser("experiment", help="run the whole MT-Opt loop in one process on the simulator")
    exp.add_argument("--out", default="runs/experiment", help="directory for results.json/.md and the PNG plot")
    exp.add_argument("--seed", type=int, default=0)
    exp.add_argument("--tasks", default="", help="comma-separated task names (default: the whole catalogue)")
    exp.add_argument("--impersonation", choices=["orig", "all", "skill"], default="skill")
    exp.add_argument("--no-rebalance", action="store_true", help="ablation: sample batches in data proportions")
    exp.add_argument("--single-task", action="store_true", help="ablation: one network per task, same total budget")
    exp.add_argument("--multi-head", action="store_true", help="ablation: per-task output heads instead of one-hot")
    exp.add_argument("--success-fraction", type=float, default=0.5)
    exp.add_argument("--gamma", type=float, default=0.9, help="discount factor")
    exp.add_argument("--learning-rate", type=float, default=1e-3)
    exp.add_argument("--max-episode-steps", type=int, default=4)
    exp.add_argument("--bootstrap-episodes", type=int, default=3000)
    exp.add_argument("--sd-examples-per-task", type=int, default=300)
    exp.add_argument("--iterations", type=int, default=60)
    exp.add_argument("--episodes-per-iteration", type=int, default=64)
    exp.add_argument("--train-steps-per-iteration", type=int, default=60)
    exp.add_argument("--eval-every", type=int, default=10)
    exp.add_argument("--eval-episodes", type=int, default=30, help="evaluation episodes per task")
    exp.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    exp.add_argument("--quick", action="store_true", help="a tiny budget: checks the pipeline, learns little")
    exp.add_argument("--no-progress", action="store_true")
    exp.set_defaults(func=_experiment)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
