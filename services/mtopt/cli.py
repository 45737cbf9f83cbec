"""The `mtopt` command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from mtopt.core.config import (
    IMPERSONATION_MODES,
    Q_TOWER_INITS,
    TOWER_STEMS,
    MTOptConfig,
)
from mtopt.experiment_config import ExperimentConfig
from mtopt.up.topology import UpConfig


def experiment_config(args: argparse.Namespace) -> ExperimentConfig:
    """The `mtopt experiment` flags as an ExperimentConfig (no flags: the config classes' defaults)."""
    algo = MTOptConfig(
        impersonation=args.impersonation,
        rebalance=not args.no_rebalance,
        multi_head=args.multi_head,
        tower_stem=args.tower_stem,
        point_readout=args.point_readout,
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
        sd_refresh_share=args.sd_refresh_share,
        sd_min_steps=args.sd_min_steps,
        device=args.device,
        time_limit_s=args.time_limit,
    )
    if args.quick:
        cfg = dataclasses.replace(cfg, bootstrap_episodes=600, sd_examples_per_task=120, sd_epochs=10, sd_min_steps=200,
                                  iterations=4, eval_every=2, eval_episodes_per_task=6)
    return cfg


def _experiment(args: argparse.Namespace) -> int:
    from mtopt.experiment import run_experiment

    result = run_experiment(experiment_config(args), args.out, progress=not args.no_progress)
    print(Path(args.out, "results.md").read_text() if args.out else "")
    summary = {k: result[k] for k in ("mean_success", "final_success", "episodes", "train_steps", "wall_s")}
    print(json.dumps(summary))
    return 0


def up_config(args: argparse.Namespace) -> UpConfig:
    """The `mtopt up` flags as an UpConfig (no flags: UpConfig's defaults)."""
    return UpConfig(
        data_dir=Path(args.data_dir), robots=args.robots, bellman_workers=args.bellman_workers, duration_s=args.duration,
        s3_endpoint=args.s3_endpoint, s3_bucket=args.s3_bucket, s3_secure=args.s3_secure,
        tasks=tuple(t for t in args.tasks.split(",") if t), fixed_ports=args.fixed_ports, seed=args.seed,
        min_model_step=args.min_model_step, publish_every_steps=args.publish_every_steps,
        sd_examples_per_task=args.sd_examples_per_task, sd_min_episodes=args.sd_min_episodes,
        sd_train_steps=args.sd_train_steps, sd_refresh_every_s=args.sd_refresh_every, sd_refresh_labels=args.sd_refresh_labels,
        sd_refresh_share=args.sd_refresh_share, epsilon=args.epsilon, threads_per_process=args.threads,
        episode_period_s=args.episode_period, train_steps=args.train_steps, eval_s=args.eval, eval_epsilon=args.eval_epsilon,
    )


def _up(args: argparse.Namespace) -> int:
    from mtopt.up.run import run_up

    summary = run_up(up_config(args), view=False if args.no_view else None)
    return 0 if summary["ok"] else 1


def _status(args: argparse.Namespace) -> int:
    from mtopt.k8s_status import status_main

    return status_main(args.namespace, args.release, context=args.context, metrics=not args.no_metrics)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtopt", description="MT-Opt continuous multi-task robot learning")
    sub = parser.add_subparsers(dest="command", required=True)

    # Defaults come from the config classes, so a flag left out means the documented default.
    a, e, u = MTOptConfig(), ExperimentConfig(), UpConfig()

    exp = sub.add_parser("experiment", help="run the whole MT-Opt loop in one process on the simulator")
    exp.add_argument("--out", default="runs/experiment", help="directory for results.json/.md and the PNG plot")
    exp.add_argument("--seed", type=int, default=e.seed)
    exp.add_argument("--tasks", default=",".join(e.tasks), help="comma-separated task names (default: the whole catalogue)")
    exp.add_argument("--impersonation", choices=list(IMPERSONATION_MODES), default=a.impersonation)
    exp.add_argument("--no-rebalance", action="store_true", help="ablation: sample batches in data proportions")
    exp.add_argument("--single-task", action="store_true", help="ablation: one network per task, same total budget")
    exp.add_argument("--multi-head", action="store_true", help="ablation: per-task output heads instead of one-hot")
    exp.add_argument("--tower-stem", choices=list(TOWER_STEMS), default=a.tower_stem,
                     help="first layers of the conv tower (Q-network and SD): conv2 sees object shape better, ~3x the tower's cost")
    exp.add_argument("--point-readout", action=argparse.BooleanOptionalAction, default=a.point_readout,
                     help="the Q-head also reads the feature map at the action's point (sharper grasps; docs/results.md 1o)")
    exp.add_argument("--q-tower-init", choices=list(Q_TOWER_INITS), default=e.q_tower_init,
                     help="start the Q-network's conv tower from random weights or from the initial success detector's tower")
    exp.add_argument("--success-fraction", type=float, default=a.success_fraction)
    exp.add_argument("--gamma", type=float, default=a.gamma, help="discount factor")
    exp.add_argument("--step-penalty", type=float, default=a.step_penalty,
                     help="reward on every non-final step is minus this (QT-Opt used 0.05)")
    exp.add_argument("--learning-rate", type=float, default=a.learning_rate)
    exp.add_argument("--max-episode-steps", type=int, default=e.max_episode_steps)
    exp.add_argument("--bootstrap-episodes", type=int, default=e.bootstrap_episodes)
    exp.add_argument("--sd-examples-per-task", type=int, default=e.sd_examples_per_task,
                     help="labelled final images per task for the initial success detector")
    exp.add_argument("--sd-random-fraction", type=float, default=e.sd_random_fraction,
                     help="share of the SD's labelling pool collected with random actions (decorrelating negatives)")
    exp.add_argument("--sd-refresh-every", type=int, default=e.sd_refresh_every,
                     help="label on-policy final images and fine-tune the SD every N iterations (0 = never)")
    exp.add_argument("--sd-refresh-labels", type=int, default=e.sd_refresh_labels, help="labels per task per SD refresh")
    exp.add_argument("--sd-refresh-share", type=float, default=e.sd_refresh_share,
                     help="share of every SD fine-tune batch drawn from the refreshes' on-policy labels (0 = uniform)")
    exp.add_argument("--sd-min-steps", type=int, default=e.sd_min_steps,
                     help="the initial SD trains for at least this many gradient steps (batch 64)")
    exp.add_argument("--device", default=e.device, help="torch device: cpu or cuda")
    exp.add_argument("--time-limit", type=float, default=e.time_limit_s,
                     help="stop training after the iteration that passes S seconds, then evaluate (0 = none)")
    exp.add_argument("--batch-size", type=int, default=a.batch_size, help="train batch size")
    exp.add_argument("--iterations", type=int, default=e.iterations)
    exp.add_argument("--episodes-per-iteration", type=int, default=e.episodes_per_iteration)
    exp.add_argument("--train-steps-per-iteration", type=int, default=e.train_steps_per_iteration)
    exp.add_argument("--eval-every", type=int, default=e.eval_every)
    exp.add_argument("--eval-episodes", type=int, default=e.eval_episodes_per_task, help="evaluation episodes per task")
    exp.add_argument("--threads", type=int, default=e.threads, help="torch threads (0 = all cores)")
    exp.add_argument("--quick", action="store_true", help="a tiny budget: checks the pipeline, learns little")
    exp.add_argument("--no-progress", action="store_true")
    exp.set_defaults(func=_experiment)

    up = sub.add_parser("up", help="run every service as its own process on this machine, with simulated robots")
    up.add_argument("--robots", type=int, default=u.robots, help="simulated robots (one agent process each)")
    up.add_argument("--bellman-workers", type=int, default=u.bellman_workers)
    up.add_argument("--duration", type=float, default=u.duration_s, help="stop after S seconds (default: until Ctrl-C)")
    up.add_argument("--train-steps", type=int, default=u.train_steps, help="also stop once the trainer has done N steps")
    up.add_argument("--eval", type=float, default=u.eval_s,
                    help="then run the robots on the final version for S seconds and report that window's success")
    up.add_argument("--eval-epsilon", type=float, default=u.eval_epsilon,
                    help="random-action probability per step during --eval (the robots restart with it)")
    up.add_argument("--data-dir", default=str(u.data_dir), help="local storage, spools and logs")
    up.add_argument("--s3-endpoint", default=u.s3_endpoint,
                    help="host:port of MinIO/S3 (credentials: MTOPT_S3_ACCESS_KEY/MTOPT_S3_SECRET_KEY)")
    up.add_argument("--s3-bucket", default=u.s3_bucket)
    up.add_argument("--s3-secure", action="store_true", help="HTTPS to the S3 endpoint")
    up.add_argument("--tasks", default=",".join(u.tasks), help="comma-separated tasks the robots practise (default: all)")
    up.add_argument("--fixed-ports", action="store_true", help="the chart's ports 50051-50056 instead of free ones")
    up.add_argument("--seed", type=int, default=u.seed)
    up.add_argument("--min-model-step", type=int, default=u.min_model_step, help="robots stay scripted until a version this trained")
    up.add_argument("--publish-every-steps", type=int, default=u.publish_every_steps, help="trainer publishes a version every K steps")
    up.add_argument("--sd-examples-per-task", type=int, default=u.sd_examples_per_task)
    up.add_argument("--sd-min-episodes", type=int, default=u.sd_min_episodes, help="episodes before the labeller trains the SD")
    up.add_argument("--sd-train-steps", type=int, default=u.sd_train_steps)
    up.add_argument("--sd-refresh-every", type=float, default=u.sd_refresh_every_s,
                    help="continuous labelling: label on-policy final images and train a new SD version every S seconds "
                         "(0 = train the first version only)")
    up.add_argument("--sd-refresh-labels", type=int, default=u.sd_refresh_labels, help="labels per task per continuous-labelling round")
    up.add_argument("--sd-refresh-share", type=float, default=u.sd_refresh_share,
                    help="share of every SD training batch drawn from the continuous-labelling rounds' labels (0 = uniform)")
    up.add_argument("--epsilon", type=float, default=u.epsilon, help="robots' random-action probability per step")
    up.add_argument("--episode-period", type=float, default=u.episode_period_s, help="shortest seconds per simulated episode")
    up.add_argument("--threads", type=int, default=u.threads_per_process, help="torch threads per process")
    up.add_argument("--no-view", action="store_true", help="a status line every 10 s instead of the live view")
    up.set_defaults(func=_up)

    st = sub.add_parser("status", help="show a deployed Helm release: pods per service, readiness, model versions")
    st.add_argument("--namespace", "-n", default="mtopt")
    st.add_argument("--release", default="mtopt", help="Helm release name")
    st.add_argument("--context", default=None, help="kubeconfig context (default: the current one; in a pod: in-cluster)")
    st.add_argument("--no-metrics", action="store_true", help="skip reading model versions through the API server's pod proxy")
    st.set_defaults(func=_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
