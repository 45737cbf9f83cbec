"""The Grafana dashboards and the alert rules: well-formed, with the variables DESIGN.md asks
for, and every metric they use is one a service or the robot agent actually exports."""

from __future__ import annotations

import json
import re

import yaml
from deploy_helpers import CHART, REPO

METRIC = re.compile(r"\bmtopt_[a-z_]+\b")
# Histograms are queried through their series suffixes.
SUFFIXES = ("_bucket", "_count", "_sum")


def exported_metrics() -> set[str]:
    """Metric names declared in the code (the first string argument of prometheus_client metrics)."""
    names = set()
    for path in [*(REPO / "services" / "mtopt").rglob("*.py"), *(REPO / "robot_agent").rglob("*.py")]:
        names |= set(re.findall(r"\"(mtopt_[a-z_]+)\"", path.read_text()))
    return names


def used(expr: str) -> set[str]:
    out = set()
    for name in METRIC.findall(expr):
        for suffix in SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        out.add(name)
    return out


def dashboards():
    paths = sorted((CHART / "dashboards").glob("*.json"))
    assert paths
    return [(p.name, json.loads(p.read_text())) for p in paths]


def panels(dashboard):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_fleet_dashboard_has_variables_and_the_design_panels():
    fleet = json.loads((CHART / "dashboards" / "fleet.json").read_text())
    variables = {v["name"]: v for v in fleet["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"task", "robot"} <= set(variables)
    exprs = " ".join(t["expr"] for p in panels(fleet) for t in p.get("targets", []))
    for metric in ("mtopt_robot_agent_episodes_total", "mtopt_log_replay_sd_successes_total", "mtopt_log_replay_ground_truth_successes_total",
                   "mtopt_log_replay_buffer_transitions", "mtopt_bellman_targets_total", "mtopt_trainer_steps_total", "mtopt_trainer_loss",
                   "mtopt_robot_agent_model_version", "mtopt_robot_agent_upload_errors_total", "mtopt_robot_agent_spool_episodes"):
        assert metric in exprs, f"the fleet dashboard lacks {metric} (DESIGN.md section 8)"


def test_dashboard_panels_are_well_formed():
    for name, dashboard in dashboards():
        assert dashboard["uid"] and dashboard["title"], name
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}", f"{name}: {panel['title']} must use the datasource variable"
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            g = panel["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{name}: {panel['title']} is off the grid"
        boxes = [(p["title"], p["gridPos"]) for p in panels(dashboard)]
        for i, (title, a) in enumerate(boxes):
            for other, b in boxes[i + 1:]:
                apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or a["y"] + a["h"] <= b["y"]
                         or b["y"] + b["h"] <= a["y"])
                assert apart, f"{name}: panels {title!r} and {other!r} overlap"


def test_dashboards_and_alerts_use_exported_metrics():
    exported = exported_metrics()
    missing = {}
    for name, dashboard in dashboards():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                for metric in used(target["expr"]) - exported:
                    missing.setdefault(metric, []).append(f"{name}: {panel['title']}")
        for variable in dashboard["templating"]["list"]:
            for metric in used(json.dumps(variable.get("query", ""))) - exported:
                missing.setdefault(metric, []).append(f"{name}: variable {variable['name']}")
    rules = yaml.safe_load((CHART / "alerts" / "mtopt.rules.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for metric in used(rule["expr"]) - exported:
                missing.setdefault(metric, []).append(f"alert {rule['alert']}")
    assert not missing, f"metrics no service exports: {missing}"


def test_alert_rules_cover_the_issue():
    rules = yaml.safe_load((CHART / "alerts" / "mtopt.rules.yaml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == {"MtoptNoEpisodesStored", "MtoptRobotSpoolGrowing", "MtoptTrainerStarved", "MtoptBellmanErrorRate",
                           "MtoptRobotModelStale", "MtoptSuccessDetectorFooled", "MtoptLabellerRoundsFailing"}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name


REFRESH_METRICS = ("mtopt_sim_labeller_refresh_sd_precision", "mtopt_sim_labeller_refresh_rounds_total",
                   "mtopt_sim_labeller_refresh_labels_added_total", "mtopt_sim_labeller_refresh_pending_episodes")


def _rows(dashboard) -> dict[str, list[dict]]:
    """Row title -> the panels laid out below it (up to the next row)."""
    rows = sorted((p for p in dashboard["panels"] if p["type"] == "row"), key=lambda p: p["gridPos"]["y"])
    out = {}
    for row, following in zip(rows, [*rows[1:], None]):
        top, bottom = row["gridPos"]["y"], following["gridPos"]["y"] if following else float("inf")
        out[row["title"]] = [p for p in panels(dashboard) if p["type"] != "row" and top < p["gridPos"]["y"] < bottom]
    return out


def test_success_row_shows_continuous_labelling():
    fleet = json.loads((CHART / "dashboards" / "fleet.json").read_text())
    success = {p["title"]: p for p in _rows(fleet)["Success"]}
    sd = " ".join(t["expr"] for t in success["Success detector on on-policy episodes"]["targets"])
    assert "mtopt_sim_labeller_refresh_sd_precision" in sd and "mtopt_sim_labeller_sd_version" in sd
    exprs = " ".join(t["expr"] for p in success.values() for t in p["targets"])
    for metric in REFRESH_METRICS:
        assert metric in exprs, f"the Success row shows no {metric}"
    rounds = [t for p in success.values() for t in p["targets"] if "mtopt_sim_labeller_refresh_rounds_total" in t["expr"]]
    assert rounds and all("by (result)" in t["expr"] and "{{result}}" in t["legendFormat"] for t in rounds)


def test_labelling_alerts_stay_silent_without_continuous_labelling():
    """The labelling alerts read only the refresh metrics, which exist only with
    refreshEverySeconds > 0: no absent() and no other metric that the one-shot labeller (the
    default install) exports. promtool test rules (test_prometheus.py) checks their behaviour."""
    rules = yaml.safe_load((CHART / "alerts" / "mtopt.rules.yaml").read_text())
    group = next(g for g in rules["groups"] if g["name"] == "mtopt.labelling")
    assert {r["alert"] for r in group["rules"]} == {"MtoptSuccessDetectorFooled", "MtoptLabellerRoundsFailing"}
    for rule in group["rules"]:
        assert "absent" not in rule["expr"], rule["alert"]
        assert used(rule["expr"]) <= set(REFRESH_METRICS), rule["alert"]
