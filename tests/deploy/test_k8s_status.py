"""`mtopt status` formatting on typed `kubernetes.client` objects (no cluster here)."""

from __future__ import annotations

from deploy_helpers import to_model
from mtopt.k8s_status import ReleaseStatus, format_status, parse_gauge, summarize_pods, with_versions


def pod(name, component, ready=True, phase="Running", restarts=0):
    return to_model({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": component, "app.kubernetes.io/instance": "mtopt"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": component, "image": "x"}]},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                   "containerStatuses": [{"name": component, "image": "x", "imageID": "", "ready": ready, "restartCount": restarts}]},
    }, "V1Pod")


METRICS = {
    "mtopt-bellman-a": "# HELP mtopt_bellman_target_model_version x\n# TYPE mtopt_bellman_target_model_version gauge\nmtopt_bellman_target_model_version 12.0\n",
    "mtopt-bellman-b": 'mtopt_bellman_targets_total{worker="b"} 5.0\nmtopt_bellman_target_model_version 11.0\n',
    "mtopt-trainer-x": "mtopt_trainer_published_version 12.0\n",
}


def test_status_table():
    pods = summarize_pods([
        pod("mtopt-trainer-x", "trainer"),
        pod("mtopt-bellman-a", "bellman"),
        pod("mtopt-bellman-b", "bellman", restarts=2),
        pod("mtopt-bellman-c", "bellman", ready=False, phase="Pending"),
        pod("mtopt-episode-store-1", "episode-store"),
        pod("mtopt-episode-store-2", "episode-store", ready=False),
    ])
    pods = with_versions(pods, lambda p: METRICS.get(p.name))
    text = format_status(ReleaseStatus(namespace="mtopt", release="mtopt", pods=tuple(pods)))
    lines = text.splitlines()
    summary = {line.split()[0]: line.split()[1:] for line in lines[3:6]}
    assert summary == {"episode-store": ["1/2", "0"], "bellman": ["2/3", "2"], "trainer": ["1/1", "0"]}
    row = {line.split()[0]: line.split() for line in lines if line.startswith("mtopt-")}
    assert row["mtopt-bellman-a"][-1] == "12" and row["mtopt-bellman-b"][-1] == "11"
    assert row["mtopt-bellman-c"][2:] == ["Pending", "no", "?"]  # not running: version not read
    assert row["mtopt-trainer-x"][-1] == "12"
    assert row["mtopt-episode-store-2"][-1] == "no"
    assert "different target versions: [11, 12]" in text


def test_unreadable_metrics_show_a_question_mark():
    pods = with_versions(summarize_pods([pod("mtopt-bellman-a", "bellman")]), lambda p: None)
    text = format_status(ReleaseStatus("ns", "r", tuple(pods)))
    assert text.splitlines()[-1].split()[-1] == "?"


def test_no_pods():
    assert "no pods found" in format_status(ReleaseStatus("ns", "r", ()))


def test_parse_gauge():
    assert parse_gauge('x_total 1\nmtopt_robot_agent_model_version{robot="a"} 3.0\n', "mtopt_robot_agent_model_version") == 3.0
    assert parse_gauge("mtopt_bellman_target_model_version_other 3\n", "mtopt_bellman_target_model_version") is None
    assert parse_gauge("", "m") is None
