"""`mtopt status`: what a Helm release of mtopt runs, read from the Kubernetes API.

For each component (the pods' ``app.kubernetes.io/component`` label): pods ready out of
pods, restarts, and per pod its phase; for every Bellman worker the model version its target
network runs (``mtopt_bellman_target_model_version``, read from the pod's metrics port through
the API server's pod proxy), and likewise the trainer's published version and each simulated
robot's model version.

Usage::

    from kubernetes import client, config
    config.load_kube_config()
    status = collect_status(client.CoreV1Api(), namespace="mtopt", release="mtopt")
    print(format_status(status))

The pieces are pure functions of typed `kubernetes.client` objects (`summarize_pods`,
`parse_gauge`, `format_status`), so they are tested without a cluster.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable

# component -> (metric with the model version that pod runs, metrics port name)
VERSION_METRICS = {
    "bellman": "mtopt_bellman_target_model_version",
    "trainer": "mtopt_trainer_published_version",
    "sim-robot": "mtopt_robot_agent_model_version",
}
COMPONENT_ORDER = ("episode-store", "model-registry", "success-detector", "log-replay", "bellman", "trainer", "sim-robot", "minio")


@dataclasses.dataclass(frozen=True)
class PodStatus:
    """One pod of the release."""

    name: str
    component: str
    phase: str
    ready: bool
    restarts: int
    node: str = ""
    model_version: int | None = None
    """Model version the pod runs (Bellman target network, trainer's last publish, robot policy);
    None where not applicable or not readable."""


@dataclasses.dataclass(frozen=True)
class ReleaseStatus:
    namespace: str
    release: str
    pods: tuple[PodStatus, ...]

    def components(self) -> dict[str, list[PodStatus]]:
        """component -> its pods, in the system's order (unknown components last)."""
        out: dict[str, list[PodStatus]] = {}
        rank = {c: i for i, c in enumerate(COMPONENT_ORDER)}
        for pod in sorted(self.pods, key=lambda p: (rank.get(p.component, len(rank)), p.component, p.name)):
            out.setdefault(pod.component, []).append(pod)
        return out


def _is_ready(pod: Any) -> bool:
    for condition in (pod.status.conditions or []) if pod.status else []:
        if condition.type == "Ready":
            return condition.status == "True"
    return False


def summarize_pods(pods: Iterable[Any]) -> list[PodStatus]:
    """PodStatus of each `kubernetes.client.V1Pod` (the component from its labels)."""
    out = []
    for pod in pods:
        labels = pod.metadata.labels or {}
        statuses = (pod.status.container_statuses or []) if pod.status else []
        out.append(PodStatus(
            name=pod.metadata.name,
            component=labels.get("app.kubernetes.io/component", "?"),
            phase=(pod.status.phase if pod.status else None) or "Unknown",
            ready=_is_ready(pod),
            restarts=sum(s.restart_count or 0 for s in statuses),
            node=(pod.spec.node_name if pod.spec else None) or "",
        ))
    return out


def parse_gauge(metrics_text: str, name: str) -> float | None:
    """The value of metric ``name`` in a Prometheus text exposition (the largest, if it has
    several label sets); None when absent."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+(\S+)", re.M)
    values = []
    for match in pattern.finditer(metrics_text):
        try:
            values.append(float(match.group(1)))
        except ValueError:
            continue
    return max(values) if values else None


def with_versions(pods: list[PodStatus], read_metrics: Callable[[PodStatus], str | None]) -> list[PodStatus]:
    """``pods`` with model_version filled from each running pod's metrics (``read_metrics``
    returns the exposition text, or None when it cannot be read)."""
    out = []
    for pod in pods:
        metric = VERSION_METRICS.get(pod.component)
        if metric and pod.phase == "Running":
            text = read_metrics(pod)
            value = parse_gauge(text, metric) if text else None
            pod = dataclasses.replace(pod, model_version=None if value is None else int(value))
        out.append(pod)
    return out


def collect_status(core_api: Any, namespace: str, release: str, *, metrics: bool = True,
                   metrics_ports: dict[str, int] | None = None, timeout_s: float = 5.0) -> ReleaseStatus:
    """The release's pods from the API server (``core_api``: a `kubernetes.client.CoreV1Api`),
    with model versions read through the pod proxy unless ``metrics`` is False."""
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/part-of=mtopt"
    pods = summarize_pods(core_api.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=timeout_s).items)
    pods = [p for p in pods if p.component != "test"]
    if metrics:
        ports = {"sim-robot": 9100, **(metrics_ports or {})}

        def read(pod: PodStatus) -> str | None:
            port = ports.get(pod.component, 9090)
            try:
                return core_api.connect_get_namespaced_pod_proxy_with_path(
                    f"{pod.name}:{port}", namespace, "metrics", _request_timeout=timeout_s)
            except Exception:  # a pod that does not answer shows "?"; the table still prints
                return None

        pods = with_versions(pods, read)
    return ReleaseStatus(namespace=namespace, release=release, pods=tuple(pods))


def format_status(status: ReleaseStatus) -> str:
    """A table per component: ready/total and restarts, then one line per pod."""
    if not status.pods:
        return f"release {status.release} in namespace {status.namespace}: no pods found (is the release name right?)"
    lines = [f"release {status.release} in namespace {status.namespace}", ""]
    lines.append(f"{'COMPONENT':<18}{'READY':>7}{'RESTARTS':>10}")
    components = status.components()
    for component, pods in components.items():
        ready = sum(p.ready for p in pods)
        lines.append(f"{component:<18}{f'{ready}/{len(pods)}':>7}{sum(p.restarts for p in pods):>10}")
    lines += ["", f"{'POD':<44}{'COMPONENT':<18}{'PHASE':<10}{'READY':<7}{'MODEL':>6}"]
    for component, pods in components.items():
        for p in pods:
            version = "" if component not in VERSION_METRICS else ("?" if p.model_version is None else str(p.model_version))
            lines.append(f"{p.name:<44}{component:<18}{p.phase:<10}{'yes' if p.ready else 'no':<7}{version:>6}")
    versions = {p.model_version for p in components.get("bellman", []) if p.model_version is not None}
    if len(versions) > 1:
        lines += ["", f"Bellman workers run different target versions: {sorted(versions)} (they converge as each reloads)."]
    return "\n".join(lines)


def status_main(namespace: str, release: str, *, context: str | None = None, metrics: bool = True) -> int:
    """`mtopt status`: prints the table; 0 when every pod is ready, 1 otherwise."""
    from kubernetes import client, config

    try:
        config.load_kube_config(context=context)
    except Exception:
        config.load_incluster_config()
    status = collect_status(client.CoreV1Api(), namespace, release, metrics=metrics)
    print(format_status(status))
    return 0 if status.pods and all(p.ready for p in status.pods) else 1
