"""Helpers of the Prometheus tests: the Debian `prometheus`/`promtool` binaries (installed by
scripts/install_tools.sh), a real Prometheus server on a free port scraping a local `mtopt up`
through file_sd, its HTTP API, and the PromQL expressions of the Grafana dashboards with the
Grafana variables substituted the way Grafana does."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from deploy_helpers import CHART
from mtopt.serving.ports import unused_port as free_port

RULES = CHART / "alerts" / "mtopt.rules.yaml"
SCRAPE_INTERVAL_S = 1
# What Grafana computes for a panel, with the data source's "Scrape interval" set to 5s:
# $__interval is the query step, $__rate_interval = max($__interval + scrape, 4 * scrape).
GRAFANA_SCRAPE_S = 5


def binary(name: str) -> str:
    """Path of prometheus/promtool; fails the test (never skips) when the package is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: run `bash scripts/install_tools.sh` as root (it installs the Debian "
                    f"package prometheus), or `sudo apt-get install -y --no-install-recommends prometheus`")
    return path


class PrometheusApi:
    """The HTTP API of one Prometheus server."""

    def __init__(self, base_url: str):
        self.base_url = base_url

    def get(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.base_url}{path}?{query}", timeout=30) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:  # 400/422: a bad expression; the body says why
            body = json.load(e)
        assert body["status"] == "success", f"GET {path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def query_range(self, expr: str, seconds: float, step_s: float) -> list[dict]:
        end = time.time()
        return self.get("/api/v1/query_range", query=expr, start=end - seconds, end=end, step=step_s)["result"]

    def scalar(self, expr: str) -> float:
        """The value of an expression with one result (0 when it has none)."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    def label_values(self, label: str, metric: str) -> list[str]:
        return self.get(f"/api/v1/label/{label}/values", **{"match[]": metric})

    def targets(self) -> list[dict]:
        return self.get("/api/v1/targets")["activeTargets"]

    def rule_groups(self) -> list[dict]:
        return self.get("/api/v1/rules")["groups"]


def write_config(directory: Path, targets_file: Path) -> Path:
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
                   "scrape_timeout": f"{SCRAPE_INTERVAL_S}s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "mtopt",  # every target's own job label (file_sd) wins
                            "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "2s"}]}],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    check = subprocess.run([binary("promtool"), "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, f"promtool check config:\n{check.stdout}\n{check.stderr}"
    return path


@contextlib.contextmanager
def run_prometheus(directory: Path, targets_file: Path):
    """A real Prometheus scraping the file_sd targets every second and evaluating the chart's
    alert rules; yields its PrometheusApi once ready, stops it (SIGTERM) afterwards."""
    config = write_config(directory, targets_file)
    port = free_port()
    log_path = directory / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={directory / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"prometheus exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready after 60 s:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        yield PrometheusApi(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- dashboards --------------------------------------------------------------------------------
def dashboards() -> list[tuple[str, dict]]:
    paths = sorted((CHART / "dashboards").glob("*.json"))
    assert paths, "no dashboards in helm/mtopt/dashboards"
    return [(p.name, json.loads(p.read_text())) for p in paths]


def panel_targets(dashboard: dict):
    """(panel title, target) of every query of every panel, rows' nested panels included."""
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner["title"], target


def variable_query(variable: dict) -> str:
    query = variable.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else query


_REGEX_SPECIAL = re.compile(r"([\\^$.|?*+()\[\]{}])")


def grafana_substitute(expr: str, selections: dict[str, list[str] | None], step_s: int, range_s: int) -> str:
    """expr with Grafana's variables replaced. selections: variable -> chosen values (None: "All",
    i.e. the variable's allValue `.*`). Values are regex-escaped and joined with `|`, as Grafana's
    Prometheus data source does for multi-value variables."""
    rate_interval = max(step_s + GRAFANA_SCRAPE_S, 4 * GRAFANA_SCRAPE_S)
    builtins = {"__rate_interval": f"{rate_interval}s", "__interval_ms": str(step_s * 1000), "__interval": f"{step_s}s",
                "__range_ms": str(range_s * 1000), "__range_s": str(range_s), "__range": f"{range_s}s"}
    for name, values in selections.items():
        builtins[name] = ".*" if values is None else "|".join(_REGEX_SPECIAL.sub(r"\\\1", v) for v in values)

    def replace(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in builtins, f"unknown Grafana variable ${name} in {expr}"
        return builtins[name]

    # longest built-in names first, so $__interval_ms is not read as $__interval + "_ms"
    names = sorted(builtins, key=len, reverse=True)
    pattern = r"\$\{(" + "|".join(map(re.escape, names)) + r")\}|\$(" + "|".join(map(re.escape, names)) + r")(?![A-Za-z0-9_])"
    out = re.sub(pattern, replace, expr)
    assert "$" not in out, f"unsubstituted variable in {out}"
    return out


def legend_labels(target: dict) -> set[str]:
    return set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", target.get("legendFormat", "")))


def has_value(series: dict) -> bool:
    """True when a query result (vector or matrix) holds at least one number (not NaN)."""
    values = series.get("values") or [series["value"]]
    return any(v[1] not in ("NaN", "+Inf", "-Inf") for v in values)
