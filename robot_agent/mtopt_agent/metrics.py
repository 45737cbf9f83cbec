"""The robot agent's Prometheus metrics, on a registry of its own (several agents can share a
process, e.g. in tests or `mtopt up`).

Names follow DESIGN.md section 8: ``mtopt_robot_agent_<what>_<unit>``, counters end in
``_total``, labels are low-cardinality (task, policy kind, status code; never an episode id).
The running model version carries the robot id as a label so a fleet dashboard can show the
version per robot (one series per agent process).
"""

from __future__ import annotations

from typing import Callable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

POLICY_KINDS = ("scripted", "cem")


class AgentMetrics:
    """Every metric of one robot agent."""

    def __init__(self, registry: CollectorRegistry | None = None, robot_id: str = ""):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.episodes = Counter(
            "mtopt_robot_agent_episodes_total", "Episodes collected and spooled, by task and policy kind.",
            ["task", "policy"], registry=r,
        )
        self.ground_truth_successes = Counter(
            "mtopt_robot_agent_ground_truth_successes_total",
            "Episodes whose own task succeeded by ground truth (simulated robots only), by task and policy kind.",
            ["task", "policy"], registry=r,
        )
        self.episodes_aborted = Counter(
            "mtopt_robot_agent_episodes_aborted_total",
            "Episodes abandoned before they were spooled (e.g. the policy produced an invalid action).",
            ["reason"], registry=r,
        )
        self.steps = Counter("mtopt_robot_agent_steps_total", "Robot actions executed.", registry=r)
        self.policy_seconds = Histogram(
            "mtopt_robot_agent_policy_duration_seconds", "Time to choose one action, by policy kind.", ["policy"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1), registry=r,
        )
        self.uploaded = Counter(
            "mtopt_robot_agent_uploaded_episodes_total", "Episodes the store acknowledged (then deleted from the spool).",
            registry=r,
        )
        self.uploaded_bytes = Counter(
            "mtopt_robot_agent_uploaded_bytes_total", "Bytes of episodes the store acknowledged.", registry=r
        )
        self.duplicate_uploads = Counter(
            "mtopt_robot_agent_duplicate_uploads_total",
            "Uploads the store already had (a retry after a lost acknowledgement); counted once in uploaded.",
            registry=r,
        )
        self.upload_errors = Counter(
            "mtopt_robot_agent_upload_errors_total", "Failed upload attempts, by gRPC status code.", ["code"], registry=r
        )
        self.rejected = Counter(
            "mtopt_robot_agent_rejected_episodes_total",
            "Episodes moved to the spool's rejected/ folder (kept with the error, never uploaded again).",
            ["code"], registry=r,
        )
        self.upload_seconds = Histogram(
            "mtopt_robot_agent_upload_duration_seconds", "Duration of successful uploads.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r,
        )
        self.spool_episodes = Gauge(
            "mtopt_robot_agent_spool_episodes", "Episodes in the spool waiting for upload (spool depth).", registry=r
        )
        self.spool_bytes = Gauge("mtopt_robot_agent_spool_bytes", "Bytes of episodes waiting in the spool.", registry=r)
        self.spool_rejected = Gauge(
            "mtopt_robot_agent_spool_rejected_episodes", "Episodes kept in the spool's rejected/ folder.", registry=r
        )
        self.spool_full = Gauge(
            "mtopt_robot_agent_spool_full", "1 while collection is paused because the spool is full.", registry=r
        )
        self.paused_seconds = Counter(
            "mtopt_robot_agent_collection_paused_seconds_total", "Time collection waited for room in the spool.",
            registry=r,
        )
        self.model_version = Gauge(
            "mtopt_robot_agent_model_version",
            "Registry version of the learned policy this robot runs; 0 while only the scripted bootstrap runs.",
            ["robot"], registry=r,
        ).labels(robot_id)
        self.weight_updates = Counter(
            "mtopt_robot_agent_weight_updates_total", "Policy swaps to a new model version (between episodes).",
            registry=r,
        )
        self.weight_errors = Counter(
            "mtopt_robot_agent_weight_errors_total",
            "Failures to find, download or load weights, by stage (resolve, watch, download, load).",
            ["stage"], registry=r,
        )
        self.model_version.set(0)
        for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INVALID_ARGUMENT,
                     grpc.StatusCode.RESOURCE_EXHAUSTED):
            self.upload_errors.labels(code.name)  # export zeros so rate() sees the common series

    def bind_spool(self, depth: Callable[[], float], nbytes: Callable[[], float], rejected: Callable[[], float]) -> None:
        """Spool gauges read the spool when scraped."""
        self.spool_episodes.set_function(depth)
        self.spool_bytes.set_function(nbytes)
        self.spool_rejected.set_function(rejected)

    def value(self, name: str, labels: dict | None = None) -> float:
        """Current value of a sample (tests and the `mtopt up` view)."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else v
