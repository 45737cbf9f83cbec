"""The `mtopt` command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from mtopt.core.config import DEFAULT_TOWER_STEM, Q_TOWER_INITS, TOWER_STEMS


def _experiment(args: argparse.Namespace) -> int:
    from mtopt.core.config import MTOptConfig
    from mtopt.experiment import ExperimentConfig, run_experiment

    algo = MTOptConfig(
        impersonation=args.impersonation,
        rebalance=not args.no_rebalance,
        multi_head=args.multi_head,
        tower_stem=args.tower_stem,
        success_fraction=args.success_fraction,
        gamma=args.gamma,
        step_penalty=args.step_penalty,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
    )
    cfg = ExperimentConfig(
        algo=algo,
        seed=args.seed,
        tasks=tuple(args.tasks.split(",")) if args.tasks else (),
        single_task=args.single_task,
        bootstrap_episodes=args.bootstrap_episodes,
        sd_examples_per_task=args.sd_examples_per_task,
        q_tower_init=args.q_tower_init,
        iterations=args.iterations,
        episodes_per_iteration=args.episodes_per_iteration,
        train_steps_per_iteration=args.train_steps_per_iteration,
        eval_every=args.eval_every,
        eval_episodes_per_task=args.eval_episodes,
        threads=args.threads,
        max_episode_steps=args.max_episode_steps,
        sd_random_fraction=args.sd_random_fraction,
        sd_refresh_every=args.sd_refresh_every,
        sd_refresh_labels=args.sd_refresh_labels,
        sd_min_steps=args.sd_min_steps,
        device=args.device,
        time_limit_s=args.time_limit,
    )
    if args.quick:
        cfg = dataclasses.replace(cfg, bootstrap_episodes=600, sd_examples_per_task=120, sd_epochs=10, sd_min_steps=200,
                                  iterations=4, eval_every=2, eval_episodes_per_task=6)
    result = run_experiment(cfg, args.out, progress=not args.no_progress)
    print(open(f"{args.out}/results.md").read() if args.out else "")
    summary = {k: result[k] for k in ("mean_success", "final_success", "episodes", "train_steps", "wall_s")}
    print(json.dumps(summary))
    return 0


def _up(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mtopt.up.run import run_up
    from mtopt.up.topology import UpConfig

    cfg = UpConfig(
        data_dir=Path(args.data_dir), robots=args.robots, bellman_workers=args.bellman_workers, duration_s=args.duration,
        s3_endpoint=args.s3_endpoint, s3_bucket=args.s3_bucket, s3_secure=args.s3_secure,
        tasks=tuple(t for t in args.tasks.split(",") if t), fixed_ports=args.fixed_ports, seed=args.seed,
        min_model_step=args.min_model_step, publish_every_steps=args.publish_every_steps,
        sd_examples_per_task=args.sd_examples_per_task, sd_min_episodes=args.sd_min_episodes,
        sd_train_steps=args.sd_train_steps, sd_refresh_every_s=args.sd_refresh_every, sd_refresh_labels=args.sd_refresh_labels,
        epsilon=args.epsilon, threads_per_process=args.threads,
        episode_period_s=args.episode_period, train_steps=args.train_steps, eval_s=args.eval, eval_epsilon=args.eval_epsilon,
    )
    summary = run_up(cfg, view=False if args.no_view else None)
    return 0 if summary["ok"] else 1


def _status(args: argparse.Namespace) -> int:
    from mtopt.k8s_status import status_main

    return status_main(args.namespace, args.release, context=args.context, metrics=not args.no_metrics)


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
    exp.add_argument("--tower-stem", choices=list(TOWER_STEMS), default=DEFAULT_TOWER_STEM,
                     help="first layers of the conv tower (Q-network and SD): conv2 sees object shape better, ~3x the tower's cost")
    exp.add_argument("--q-tower-init", choices=list(Q_TOWER_INITS), default="random",
                     help="start the Q-network's conv tower from random weights or from the initial success detector's tower")
    exp.add_argument("--success-fraction", type=float, default=0.5)
    exp.add_argument("--gamma", type=float, default=0.9, help="discount factor")
    exp.add_argument("--step-penalty", type=float, default=0.0,
                     help="reward on every non-final step is minus this (QT-Opt used 0.05)")
    exp.add_argument("--learning-rate", type=float, default=1e-3)
    exp.add_argument("--max-episode-steps", type=int, default=4)
    exp.add_argument("--bootstrap-episodes", type=int, default=3000)
    exp.add_argument("--sd-examples-per-task", type=int, default=1000,
                     help="labelled final images per task for the initial success detector")
    exp.add_argument("--sd-random-fraction", type=float, default=0.3,
                     help="share of the SD's labelling pool collected with random actions (decorrelating negatives)")
    exp.add_argument("--sd-refresh-every", type=int, default=5,
                     help="label on-policy final images and fine-tune the SD every N iterations (0 = never)")
    exp.add_argument("--sd-refresh-labels", type=int, default=10, help="labels per task per SD refresh")
    exp.add_argument("--sd-min-steps", type=int, default=1500,
                     help="the initial SD trains for at least this many gradient steps (batch 64)")
    exp.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    exp.add_argument("--time-limit", type=float, default=0.0,
                     help="stop training after the iteration that passes S seconds, then evaluate (0 = none)")
    exp.add_argument("--batch-size", type=int, default=128, help="train batch size")
    exp.add_argument("--iterations", type=int, default=60)
    exp.add_argument("--episodes-per-iteration", type=int, default=64)
    exp.add_argument("--train-steps-per-iteration", type=int, default=60)
    exp.add_argument("--eval-every", type=int, default=10)
    exp.add_argument("--eval-episodes", type=int, default=30, help="evaluation episodes per task")
    exp.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    exp.add_argument("--quick", action="store_true", help="a tiny budget: checks the pipeline, learns little")
    exp.add_argument("--no-progress", action="store_true")
    exp.set_defaults(func=_experiment)

    up = sub.add_parser("up", help="run every service as its own process on this machine, with simulated robots")
    up.add_argument("--robots", type=int, default=4, help="simulated robots (one agent process each)")
    up.add_argument("--bellman-workers", type=int, default=2)
    up.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (default: until Ctrl-C)")
    up.add_argument("--train-steps", type=int, default=0, help="also stop once the trainer has done N steps")
    up.add_argument("--eval", type=float, default=0.0,
                    help="then run the robots on the final version for S seconds and report that window's success")
    up.add_argument("--eval-epsilon", type=float, default=0.0,
                    help="random-action probability per step during --eval (the robots restart with it)")
    up.add_argument("--data-dir", default="mtopt-data", help="local storage, spools and logs")
    up.add_argument("--s3-endpoint", default="", help="host:port of MinIO/S3 (credentials: MTOPT_S3_ACCESS_KEY/MTOPT_S3_SECRET_KEY)")
    up.add_argument("--s3-bucket", default="mtopt")
    up.add_argument("--s3-secure", action="store_true", help="HTTPS to the S3 endpoint")
    up.add_argument("--tasks", default="", help="comma-separated tasks the robots practise (default: all)")
    up.add_argument("--fixed-ports", action="store_true", help="the chart's ports 50051-50056 instead of free ones")
    up.add_argument("--seed", type=int, default=0)
    up.add_argument("--min-model-step", type=int, default=100, help="robots stay scripted until a version this trained")
    up.add_argument("--publish-every-steps", type=int, default=50, help="trainer publishes a version every K steps")
    up.add_argument("--sd-examples-per-task", type=int, default=200)
    up.add_argument("--sd-min-episodes", type=int, default=600, help="episodes before the labeller trains the SD")
    up.add_argument("--sd-train-steps", type=int, default=600)
    up.add_argument("--sd-refresh-every", type=float, default=60.0,
                    help="continuous labelling: label on-policy final images and train a new SD version every S seconds "
                         "(0 = train the first version only)")
    up.add_argument("--sd-refresh-labels", type=int, default=10, help="labels per task per continuous-labelling round")
    up.add_argument("--epsilon", type=float, default=0.2, help="robots' random-action probability per step")
    up.add_argument("--episode-period", type=float, default=0.5, help="shortest seconds per simulated episode")
    up.add_argument("--threads", type=int, default=1, help="torch threads per process")
    up.add_argument("--no-view", action="store_true", help="a status line every 10 s instead of the live view")
    up.set_defaults(func=_up)

    st = sub.add_parser("status", help="show a deployed Helm release: pods per service, readiness, model versions")
    st.add_argument("--namespace", "-n", default="mtopt")
    st.add_argument("--release", default="mtopt", help="Helm release name")
    st.add_argument("--context", default=None, help="kubeconfig context (default: the current one; in a pod: in-cluster)")
    st.add_argument("--no-metrics", action="store_true", help="skip reading model versions through the API server's pod proxy")
    st.set_defaults(func=_status)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
