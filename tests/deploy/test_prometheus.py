"""A real Prometheus (Debian package) on the dashboards and alert rules of the chart.

A short local `mtopt up` (every service its own process, simulated robots and labeller) runs;
Prometheus scrapes it through the file_sd targets file `mtopt up` writes, with the chart's alert
rules loaded. Once the system learns (trainer steps > 0), every PromQL expression of every
dashboard panel is evaluated as Grafana would (range query, variables substituted: "All" and one
existing task and robot) and must return numbers, with the labels its legend names; every alert
rule group must be loaded and evaluate with health "ok". `promtool check rules` must pass, and so
must the promtool unit tests of the alerts in tests/deploy/alert_tests/ (input series -> which
alerts fire when).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml
from deploy_helpers import REPO
from prometheus_helpers import (RULES, PrometheusApi, binary, dashboards, grafana_substitute, has_value, legend_labels,
                                panel_targets, run_prometheus, variable_query)

STEP_S, RANGE_S = 5, 60


def test_promtool_check_rules():
    check = subprocess.run([binary("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, f"promtool check rules:\n{check.stdout}\n{check.stderr}"


def test_promtool_alert_unit_tests():
    """The alert rule unit tests (tests/deploy/alert_tests/*.yaml) pass: e.g. the continuous-
    labelling alerts fire on a fooled SD or failing rounds and stay silent with the one-shot labeller."""
    files = sorted((REPO / "tests" / "deploy" / "alert_tests").glob("*.yaml"))
    assert files
    check = subprocess.run([binary("promtool"), "test", "rules", *map(str, files)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, f"promtool test rules:\n{check.stdout}\n{check.stderr}"


def test_grafana_variables_are_substituted_like_grafana():
    expr = 'sum by (task) (rate(m{task=~"$task", robot=~"${robot}"}[$__rate_interval])) * $__interval_ms / $__range_s'
    got = grafana_substitute(expr, {"task": ["lift-red", "a.b"], "robot": None}, step_s=5, range_s=60)
    assert got == 'sum by (task) (rate(m{task=~"lift-red|a\\.b", robot=~".*"}[20s])) * 5000 / 60'
    with pytest.raises(AssertionError, match="unsubstituted"):
        grafana_substitute("m{x=~\"$unknown\"}", {}, step_s=5, range_s=60)


def _start_up(tmp_path) -> subprocess.Popen:
    """`mtopt up` with small settings so that the system learns within a minute on a busy box, and
    the labeller runs continuous-labelling rounds (short SD trainings) for the Success row."""
    cmd = [sys.executable, "-m", "mtopt.cli", "up", "--data-dir", str(tmp_path / "up"), "--duration", "600", "--no-view",
           "--robots", "2", "--bellman-workers", "2", "--sd-min-episodes", "40", "--sd-examples-per-task", "16",
           "--sd-train-steps", "50", "--publish-every-steps", "10", "--min-model-step", "10", "--episode-period", "0.2",
           "--sd-refresh-every", "10"]
    env = dict(os.environ)
    env.pop("MTOPT_TASKS", None)
    env["MTOPT_SIM_LABELLER_REFRESH_TRAIN_STEPS"] = "50"
    return subprocess.Popen(cmd, stdout=open(tmp_path / "up.out", "wb"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _stop_up(proc: subprocess.Popen, tmp_path) -> dict:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # ends learning, lets robots converge, prints the summary
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    lines = (tmp_path / "up.out").read_text(errors="replace").strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"ok": False, "error": "no summary:\n" + "\n".join(lines[-40:])}


def _wait(what: str, condition, timeout_s: float, proc: subprocess.Popen, tmp_path) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"mtopt up exited ({proc.returncode}) while waiting for {what}:\n"
                        f"{(tmp_path / 'up.out').read_text(errors='replace')[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout_s:.0f} s:\n{(tmp_path / 'up.out').read_text(errors='replace')[-3000:]}")
        time.sleep(1.0)


def _variable_values(api: PrometheusApi, dashboard: dict) -> dict[str, list[str]]:
    """The values each query variable offers (label_values(metric, label)); each must have some."""
    out = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", variable_query(variable))
        assert m, f"variable {variable['name']}: only label_values(metric, label) queries are checked here"
        values = api.label_values(m.group(2), m.group(1))
        assert values, f"variable {variable['name']} ({variable_query(variable)}) offers no value"
        out[variable["name"]] = values
    return out


def _one_selection(api: PrometheusApi, values: dict[str, list[str]]) -> dict[str, list[str]]:
    """One existing value per variable: the task with the most SD-labelled successes (so that
    every per-task panel has data for it) and the first robot."""
    selection = {}
    for name, options in values.items():
        if name == "task":
            ranked = api.query("sort_desc(sum by (task) (mtopt_log_replay_sd_successes_total))")
            best = [s["metric"]["task"] for s in ranked if s["metric"].get("task") in options]
            selection[name] = best[:1] or options[:1]
        else:
            selection[name] = sorted(options)[:1]
    return selection


def _check_panels(api: PrometheusApi, name: str, dashboard: dict, selections: dict[str, list[str] | None]) -> list[str]:
    problems = []
    for title, target in panel_targets(dashboard):
        expr = grafana_substitute(target["expr"], selections, STEP_S, RANGE_S)
        try:
            result = api.query_range(expr, RANGE_S, STEP_S)
        except AssertionError as e:
            problems.append(f"{name} / {title}: {e}")
            continue
        if not any(has_value(s) for s in result):
            problems.append(f"{name} / {title} [{selections}]: no data for {expr}")
            continue
        for series in result:
            missing = legend_labels(target) - set(series["metric"])
            if missing:
                problems.append(f"{name} / {title}: legend labels {sorted(missing)} absent from {series['metric']}")
                break
    return problems


def _check_rules(api: PrometheusApi) -> None:
    expected = yaml.safe_load(RULES.read_text())["groups"]
    loaded = {g["name"]: g for g in api.rule_groups()}
    assert set(loaded) == {g["name"] for g in expected}, f"rule groups loaded: {sorted(loaded)}"
    for group in expected:
        rules = {r["name"]: r for r in loaded[group["name"]]["rules"]}
        assert set(rules) == {r["alert"] for r in group["rules"]}, f"{group['name']}: rules loaded {sorted(rules)}"
        for rule in group["rules"]:
            got = rules[rule["alert"]]
            assert got["health"] == "ok" and not got.get("lastError"), f"{rule['alert']}: {got['health']} {got.get('lastError')}"
            assert not got["lastEvaluation"].startswith("0001-"), f"{rule['alert']} was never evaluated"
            api.query(rule["expr"])  # the expression itself evaluates (it may rightly be empty: no alert)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dashboards_and_alerts_on_a_real_prometheus(tmp_path):
    binary("prometheus")
    up = _start_up(tmp_path)
    targets_file = tmp_path / "up" / "prometheus_targets.json"
    try:
        _wait("prometheus_targets.json", targets_file.exists, 60, up, tmp_path)
        file_jobs = {t["labels"]["job"] for t in json.loads(targets_file.read_text())}
        assert file_jobs == {"mtopt-model-registry", "mtopt-episode-store", "mtopt-success-detector", "mtopt-trainer",
                             "mtopt-log-replay", "mtopt-bellman", "mtopt-sim-robot", "mtopt-sim-labeller"}, file_jobs
        with run_prometheus(tmp_path, targets_file) as api:
            _wait("trainer steps in Prometheus", lambda: api.scalar("sum(mtopt_trainer_steps_total)") > 0, 300, up, tmp_path)
            _wait("a learned policy on a robot", lambda: api.scalar("max(mtopt_robot_agent_model_version)") > 1, 120, up, tmp_path)
            # a labelling round that labelled SD successes (the precision is NaN before)
            _wait("an SD precision from continuous labelling",
                  lambda: api.scalar("count(mtopt_sim_labeller_refresh_sd_precision >= 0)") > 0, 180, up, tmp_path)
            time.sleep(4 * 5 + 2)  # a full $__rate_interval of learning in every rate() window

            down = [(t["labels"]["job"], t["lastError"]) for t in api.targets() if t["health"] != "up"]  # labeller: continuous
            assert not down, f"targets not up: {down}"

            problems = []
            for name, dashboard in dashboards():
                values = _variable_values(api, dashboard)
                problems += _check_panels(api, name, dashboard, {v: None for v in values})
                problems += _check_panels(api, name, dashboard, _one_selection(api, values))
            assert not problems, "dashboard queries without data:\n" + "\n".join(problems)

            workers = api.query("sum by (worker) (mtopt_bellman_targets_total)")
            assert len(workers) == 2, f"Bellman targets by worker: {workers}"
            _check_rules(api)
    finally:
        summary = _stop_up(up, tmp_path)
    assert summary["ok"] and summary["train_steps"] > 0, json.dumps(summary)[:3000]
