"""`mtopt up`'s topology: every process's environment is accepted by that component's own config
loader and names only real settings (on both storage backends); ports never collide; the
Prometheus file_sd targets cover every process; the live view renders from scraped samples."""

from __future__ import annotations

import dataclasses
import importlib
import socket
import sys
from pathlib import Path

import pytest

from mtopt.serving import ports as port_helper
from mtopt.up.monitor import Monitor, Snapshot, render
from mtopt.up.topology import UpConfig, allocate_ports, build_topology, evaluation_spec, prometheus_targets

CONFIG_MODULES = {"robot": "mtopt_agent.config", "labeller": "mtopt.sim_labeller"}


def _config_module(role: str):
    return importlib.import_module(CONFIG_MODULES.get(role, f"mtopt.{role}.config"))


@pytest.mark.parametrize("s3", [False, True])
def test_every_process_env_is_a_valid_config(tmp_path, s3, monkeypatch):
    if s3:
        monkeypatch.setenv("MTOPT_S3_ACCESS_KEY", "key")
        monkeypatch.setenv("MTOPT_S3_SECRET_KEY", "secret")
    cfg = UpConfig(data_dir=tmp_path, robots=3, bellman_workers=2, s3_endpoint="127.0.0.1:9000" if s3 else "",
                   tasks=("lift-any", "lift-red"))
    specs = build_topology(cfg, allocate_ports(cfg))
    assert [s.role for s in specs].count("robot") == 3 and [s.role for s in specs].count("bellman") == 2
    for spec in specs:
        module = _config_module(spec.role)
        env = dict(spec.env)
        if s3:  # credentials come from the environment, as on Kubernetes from a Secret
            env |= {"MTOPT_S3_ACCESS_KEY": "key", "MTOPT_S3_SECRET_KEY": "secret"}
        config = module.load_config(env)
        fields = {f.name.upper() for f in dataclasses.fields(config)}
        unknown = [k for k in spec.env if k.startswith(module.PREFIX) and k[len(module.PREFIX):] not in fields]
        assert not unknown, (spec.name, unknown)
        if hasattr(config, "backend"):
            assert config.backend == ("s3" if s3 else "local"), spec.name
        assert spec.argv[0] == sys.executable


def test_ports_are_distinct_and_targets_cover_every_process(tmp_path):
    cfg = UpConfig(data_dir=tmp_path, robots=4, bellman_workers=3)
    ports = allocate_ports(cfg)
    assert len(set(ports.values())) == len(ports)
    specs = build_topology(cfg, ports)
    targets = prometheus_targets(specs)
    assert sorted(t["labels"]["process"] for t in targets) == sorted(s.name for s in specs)
    assert all(t["labels"]["job"].startswith("mtopt-") for t in targets)
    fixed = allocate_ports(dataclasses.replace(cfg, fixed_ports=True))
    assert fixed["episode_store"] == 50051 and fixed["trainer"] == 50056 and fixed["bellman-1"] == 50064


def test_chosen_ports_avoid_the_ephemeral_range_where_connections_take_ports():
    # A port in the ephemeral range can be taken by any outgoing connection before the child binds it
    # (a CI run lost its labeller that way); ports below it are only ever bound explicitly.
    low, _ = port_helper.ephemeral_range()
    chosen = [port_helper.unused_port() for _ in range(64)]
    assert len(set(chosen)) == len(chosen)
    if low - 20000 >= 2000:
        assert all(20000 <= p < low for p in chosen), chosen
    held = socket.socket()
    held.bind(("0.0.0.0", chosen[0]))
    try:
        assert not port_helper._bindable(chosen[0])
    finally:
        held.close()


def test_chosen_ports_fall_back_to_the_kernel_when_no_range_is_left(tmp_path, monkeypatch):
    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("1024\t65535\n")
    monkeypatch.setattr(port_helper, "_RANGE_FILE", range_file)
    assert port_helper.ephemeral_range() == (1024, 65535)
    chosen = {port_helper.unused_port() for _ in range(16)}
    assert len(chosen) == 16 and all(1024 <= p <= 65535 for p in chosen)
    range_file.write_text("garbage")
    assert port_helper.ephemeral_range() == (32768, 60999)


def test_live_view_and_state_from_scraped_samples(tmp_path):
    cfg = UpConfig(data_dir=Path(tmp_path), robots=2, bellman_workers=1)
    specs = build_topology(cfg, allocate_ports(cfg))
    monitor = Monitor(specs)

    def snap(t, episodes, successes, steps):
        agent = {("mtopt_robot_agent_episodes_total", (("policy", "cem"), ("task", "lift-red"))): episodes,
                 ("mtopt_robot_agent_ground_truth_successes_total", (("policy", "cem"), ("task", "lift-red"))): successes,
                 ("mtopt_robot_agent_model_version", (("robot", "x"),)): 7.0}
        return Snapshot(t, {"sim-0": agent, "sim-1": agent, "trainer": {("mtopt_trainer_steps_total", ()): steps},
                            "bellman-0": {("mtopt_bellman_targets_total", (("worker", "bellman-0"),)): steps * 100}})

    monitor.history.extend([snap(100.0, 10, 1, 0), snap(110.0, 30, 11, 50)])
    state = monitor.state(window_s=10)
    row = state["tasks"]["lift-red"]
    assert row["episodes"] == 60 and row["cem_success"] == pytest.approx(22 / 60)
    assert row["cem_recent_episodes"] == 40 and row["cem_recent_success"] == pytest.approx(20 / 40)
    assert state["train_steps"] == 50 and state["bellman"]["bellman-0"]["targets_per_s"] == pytest.approx(500)
    assert {r["model_version"] for r in state["robots"].values()} == {7}
    text = render(state, {"trainer": "SERVING", "log_replay": None})
    assert "lift-red" in text and "log_replay=DOWN" in text and "bellman-0: 500/s" in text


def test_labeller_runs_on_with_continuous_labelling(tmp_path):
    cfg = UpConfig(data_dir=tmp_path, robots=1, bellman_workers=1)
    labeller = next(s for s in build_topology(cfg, allocate_ports(cfg)) if s.role == "labeller")
    assert not labeller.exits  # a long-running process: the supervisor reports it if it ends
    config = _config_module("labeller").load_config(labeller.env)
    assert config.refresh_every_s == 60.0 and config.refresh_labels_per_task == 10
    assert config.refresh_focus_share == cfg.sd_refresh_share == 0.5
    one_shot = dataclasses.replace(cfg, sd_refresh_every_s=0, sd_refresh_labels=4)
    labeller = next(s for s in build_topology(one_shot, allocate_ports(one_shot)) if s.role == "labeller")
    assert labeller.exits and _config_module("labeller").load_config(labeller.env).refresh_every_s == 0


def test_state_reports_sd_versions_and_labelling_rounds(tmp_path):
    cfg = UpConfig(data_dir=Path(tmp_path), robots=1, bellman_workers=1)
    monitor = Monitor(build_topology(cfg, allocate_ports(cfg)))
    sd = {("mtopt_success_detector_serving_version", ()): 3.0,
          ("mtopt_success_detector_train_runs_total", (("result", "ready"),)): 3.0,
          ("mtopt_success_detector_train_runs_total", (("result", "failed"),)): 1.0}
    labeller = {("mtopt_sim_labeller_refresh_rounds_total", (("result", "trained"),)): 2.0,
                ("mtopt_sim_labeller_refresh_rounds_total", (("result", "no_new_episodes"),)): 5.0,
                ("mtopt_sim_labeller_refresh_labels_added_total", (("outcome", "positive"),)): 7.0,
                ("mtopt_sim_labeller_refresh_labels_added_total", (("outcome", "negative"),)): 13.0,
                ("mtopt_sim_labeller_refresh_sd_precision", ()): 0.75}
    monitor.history.append(Snapshot(1.0, {"success_detector": sd, "labeller": labeller}))
    state = monitor.state()
    assert (state["sd_version"], state["sd_versions_trained"], state["sd_refresh_rounds"]) == (3, 3, 2)
    assert state["sd_refresh_labels"] == 20 and state["sd_precision"] == 0.75
    labeller[("mtopt_sim_labeller_refresh_sd_precision", ())] = float("nan")  # no SD success labelled yet
    assert monitor.state()["sd_precision"] is None
    assert "SD v3 (2 refreshes)" in render(state, {})


def test_counters_carry_across_a_process_restart(tmp_path, monkeypatch):
    """A restarted robot counts from zero again; the monitor adds what it had counted, so run
    totals stay whole and a window that spans the restart counts only new episodes."""
    cfg = UpConfig(data_dir=Path(tmp_path), robots=1, bellman_workers=1)
    monitor = Monitor(build_topology(cfg, allocate_ports(cfg)))
    episodes = ("mtopt_robot_agent_episodes_total", (("policy", "cem"), ("task", "lift-red")))
    successes = ("mtopt_robot_agent_ground_truth_successes_total", (("policy", "cem"), ("task", "lift-red")))
    version = ("mtopt_robot_agent_model_version", ())
    scrapes = iter([
        {episodes: 40.0, successes: 10.0, version: 5.0},
        {},  # stopped: keeps its last values
        {version: 6.0},  # restarted: no episode yet, so the labelled counters are absent
        {episodes: 8.0, successes: 6.0, version: 6.0},
    ])
    monkeypatch.setattr("mtopt.up.monitor.scrape", lambda port, timeout_s=1.0: next(scrapes) if port == robot_port else {})
    robot_port = next(s.metrics_port for s in monitor.specs if s.role == "robot")
    monitor.poll()
    since = monitor.poll()
    monitor.poll()
    monitor.poll()
    row = monitor.state(since=since)["tasks"]["lift-red"]
    assert (row["cem_episodes"], row["cem_success"]) == (48, pytest.approx(16 / 48))
    assert (row["cem_recent_episodes"], row["cem_recent_success"]) == (8, pytest.approx(6 / 8))
    assert monitor.state()["robots"]["sim-0"]["model_version"] == 6  # gauges are not carried


def test_evaluation_restarts_robots_greedy_and_learned_only(tmp_path):
    cfg = UpConfig(data_dir=tmp_path, robots=2, bellman_workers=1, epsilon=0.1, eval_s=60, eval_epsilon=0.0)
    for spec in build_topology(cfg, allocate_ports(cfg)):
        if spec.role == "robot":
            config = _config_module("robot").load_config(evaluation_spec(spec, cfg).env)
            assert (config.epsilon, config.scripted_fraction) == (0.0, 0.0)
            assert _config_module("robot").load_config(spec.env).epsilon == 0.1
