"""`mtopt up`: the whole system on one machine, every service its own process, simulated robots.

    run_up(UpConfig(robots=4, duration_s=300))     # -> the summary dict (also printed as JSON)

Start order: model_registry, episode_store, success_detector, trainer, log_replay, Bellman
workers, robots, the simulated labeller (which trains the first success detector once enough
scripted episodes are stored, then, with continuous labelling, a new version from on-policy
labels every `sd_refresh_every_s`). Stops cleanly after `duration_s`, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time

from mtopt.up.monitor import Monitor, render
from mtopt.up.supervisor import ProcessFailed, Supervisor, health_status
from mtopt.up.topology import UpConfig, allocate_ports, build_topology, evaluation_spec, prometheus_targets

log = logging.getLogger(__name__)


def _summary(config: UpConfig, state: dict, codes: dict[str, int | None], error: str | None) -> dict:
    return {
        "ok": error is None,
        "error": error,
        "duration_s": round(state.get("elapsed_s", 0.0), 1),
        "episodes_stored": state.get("episodes_stored", 0),
        "train_steps": state.get("train_steps", 0),
        "model_versions_published": state.get("versions_published", 0),
        "success_window": (f"evaluation of the final version for {config.eval_s:.0f} s "
                           f"(epsilon {config.eval_epsilon:g}, every episode learned)") if config.eval_s > 0 else "the last minutes of the run",
        "newest_model_version": state.get("newest_version", 0),
        "robot_versions": {name: r["model_version"] for name, r in state.get("robots", {}).items()},
        "sd_version": state.get("sd_version", 0),
        "sd_versions_trained": state.get("sd_versions_trained", 0),
        "sd_refresh_rounds": state.get("sd_refresh_rounds", 0),
        "sd_refresh_labels": state.get("sd_refresh_labels", 0),
        "sd_precision_last_round": state.get("sd_precision"),
        "bellman_targets": {name: b["targets"] for name, b in state.get("bellman", {}).items()},
        "per_task_success": {
            task: {
                "episodes": row["episodes"],
                "scripted": row["scripted_success"],
                "learned": row["cem_success"],
                "learned_recent": row["cem_recent_success"],
                "learned_recent_episodes": row["cem_recent_episodes"],
                "sd": row["sd_success"],
            }
            for task, row in state.get("tasks", {}).items()
        },
        "exit_codes": codes,
        "data_dir": str(config.data_dir),
    }


def _finish(supervisor: Supervisor, monitor: Monitor, config: UpConfig, success_window: float, out,
            converge_s: float = 30.0) -> dict:
    """Ends learning first (Bellman workers, then the trainer, which checkpoints), lets every robot
    pick up the last published version (with eval_s: restarted with the evaluation's exploration
    and no scripted episodes, `evaluation_spec`), then lets them run it for eval_s seconds;
    returns the final state, whose recent success rates are those of that evaluation."""
    print("mtopt up: stopping Bellman workers, the trainer and the labeller; robots switch to the last version ...",
          file=out, flush=True)
    supervisor.stop_roles(("bellman",))
    supervisor.stop_roles(("trainer", "labeller"))  # the SD stays as it is for the evaluation
    if config.eval_s > 0:
        print(f"mtopt up: restarting the robots for the evaluation (epsilon {config.eval_epsilon:g}, no scripted episodes) ...",
              file=out, flush=True)
        robots = [evaluation_spec(s, config) for s in supervisor.specs if s.role == "robot"]
        supervisor.stop_roles(("robot",))  # each uploads what it holds, then exits
        failed = {s.name: supervisor.exit_codes.get(s.name) for s in robots if supervisor.exit_codes.get(s.name) != 0}
        if failed:  # their restart would overwrite these codes in the summary
            raise ProcessFailed(f"robots did not stop cleanly for the evaluation (exit codes {failed}); logs in "
                                f"{config.data_dir / 'logs'}")
        for spec in robots:
            supervisor.start(spec)
        for spec in robots:
            supervisor.wait_started(spec)
    deadline = time.monotonic() + converge_s
    while True:
        supervisor.check()
        monitor.poll()
        state = monitor.state(success_window_s=success_window)
        versions = {r["model_version"] for r in state["robots"].values()}
        if versions == {state["newest_version"]} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if config.eval_s <= 0:
        return state
    print(f"mtopt up: evaluating version {state['newest_version']} on the robots for {config.eval_s:.0f} s ...", file=out, flush=True)
    since = monitor.history[-1]
    deadline = time.monotonic() + config.eval_s
    while time.monotonic() < deadline:
        supervisor.check()
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    monitor.poll()
    return monitor.state(since=since)


def run_up(config: UpConfig, *, view: bool | None = None, out=sys.stdout) -> dict:
    """Runs the system until the duration ends or a signal arrives; returns the summary."""
    if config.s3 and not (os.environ.get("MTOPT_S3_ACCESS_KEY") or os.environ.get("AWS_ACCESS_KEY_ID")):
        raise SystemExit("mtopt up --s3-endpoint: set MTOPT_S3_ACCESS_KEY and MTOPT_S3_SECRET_KEY (or AWS_*) first")
    view = out.isatty() if view is None else view
    config.data_dir.mkdir(parents=True, exist_ok=True)
    specs = build_topology(config, allocate_ports(config))
    # for a local Prometheus: scrape_configs: [{job_name: mtopt, file_sd_configs: [{files: [<this file>]}]}]
    (config.data_dir / "prometheus_targets.json").write_text(json.dumps(prometheus_targets(specs), indent=1))
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    monitor = Monitor(specs)
    state: dict = {}
    error: str | None = None
    supervisor = Supervisor(specs, config.data_dir / "logs", grace_s=config.grace_s)
    try:
        print(f"mtopt up: {len(specs)} processes, data in {config.data_dir}, logs in {config.data_dir / 'logs'}", file=out)
        supervisor.start_all(on_started=lambda s: print(
            f"  started {s.name:<17} {s.address if s.grpc_port else '':<16} metrics :{s.metrics_port}", file=out))
        t0 = time.monotonic()
        last_line = 0.0
        success_window = max(60.0, 0.25 * config.duration_s)
        while not stop.is_set():
            supervisor.check()
            monitor.poll()
            state = monitor.state(success_window_s=success_window)
            now = time.monotonic()
            if view:
                health = {s.name: health_status(s.address) for s in specs if s.grpc_port is not None and s.role != "bellman"}
                out.write("\x1b[H\x1b[2J" + render(state, health) + "\n")
                out.flush()
            elif now - last_line >= 10:
                last_line = now
                print(f"[{state['elapsed_s']:5.0f}s] episodes {state['episodes_stored']} SD v{state['sd_version']} "
                      f"step {state['train_steps']} model v{state['newest_version']} "
                      f"targets/s {state['targets_per_s']:.0f}", file=out, flush=True)
            if config.duration_s and now - t0 >= config.duration_s:
                break
            if config.train_steps and state["train_steps"] >= config.train_steps:
                break
            stop.wait(2.0)
        state = _finish(supervisor, monitor, config, success_window, out)
    except ProcessFailed as e:
        error = str(e)
        print(f"mtopt up: {e}", file=sys.stderr)
    finally:
        codes = supervisor.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = _summary(config, state, codes, error)
    print(json.dumps(summary), file=out, flush=True)
    return summary
