"""The `mtopt` command's flags: left out, they mean the config classes' defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from mtopt.cli import build_parser, experiment_config, up_config
from mtopt.core.config import MTOptConfig
from mtopt.experiment_config import ExperimentConfig
from mtopt.up.topology import UpConfig


def test_experiment_without_flags_is_the_default_config():
    args = build_parser().parse_args(["experiment"])
    assert experiment_config(args) == ExperimentConfig()


def test_up_without_flags_is_the_default_config():
    args = build_parser().parse_args(["up"])
    assert up_config(args) == UpConfig()


def test_experiment_flags_reach_the_config():
    args = build_parser().parse_args([
        "experiment", "--seed", "3", "--tasks", "lift-red,lift-blue", "--impersonation", "orig", "--no-rebalance",
        "--tower-stem", "conv2", "--point-readout", "--gamma", "0.8", "--step-penalty", "0.05", "--batch-size", "64",
        "--sd-examples-per-task", "300", "--eval-episodes", "7", "--time-limit", "12.5",
    ])
    cfg = experiment_config(args)
    assert cfg.algo == dataclasses.replace(
        MTOptConfig(), impersonation="orig", rebalance=False, tower_stem="conv2", point_readout=True, gamma=0.8, step_penalty=0.05, batch_size=64
    )
    assert (cfg.seed, cfg.tasks, cfg.sd_examples_per_task, cfg.eval_episodes_per_task, cfg.time_limit_s) == (
        3, ("lift-red", "lift-blue"), 300, 7, 12.5
    )


def test_up_flags_reach_the_config():
    args = build_parser().parse_args([
        "up", "--robots", "8", "--bellman-workers", "3", "--data-dir", "/tmp/x", "--tasks", "lift-any",
        "--sd-refresh-every", "0", "--threads", "2",
    ])
    cfg = up_config(args)
    assert (cfg.robots, cfg.bellman_workers, cfg.data_dir, cfg.tasks, cfg.sd_refresh_every_s, cfg.threads_per_process) == (
        8, 3, Path("/tmp/x"), ("lift-any",), 0.0, 2
    )


def test_a_bad_choice_is_refused():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["experiment", "--impersonation", "everyone"])
