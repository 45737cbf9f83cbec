"""A Bellman worker's Prometheus metrics, on the registry the server gives it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ERROR_REASONS = ("log_replay_unavailable", "log_replay_error", "trainer_unavailable", "push_rejected", "bad_batch", "registry",
                 "internal")


class BellmanMetrics:
    """All bellman metrics (names per DESIGN.md section 8)."""

    def __init__(self, registry: CollectorRegistry, worker: str):
        self.registry, self.worker = registry, worker
        self.targets = Counter("mtopt_bellman_targets_total", "Targets (rows) computed.", ["worker"], registry=registry).labels(worker)
        self.pushed = Counter("mtopt_bellman_batches_pushed_total", "TargetBatches accepted by the trainer.", registry=registry)
        self.rejected = Counter("mtopt_bellman_batches_rejected_total", "PushTargets answers accepted=false (back-pressure); retried.",
                                registry=registry)
        self.backpressure_seconds = Counter("mtopt_bellman_backpressure_seconds_total",
                                            "Time spent waiting for the trainer's buffer to make room.", registry=registry)
        self.errors = Counter("mtopt_bellman_errors_total", "Failures by reason (retried or the batch skipped).", ["reason"],
                              registry=registry)
        self.target_version = Gauge("mtopt_bellman_target_model_version", "Registry version loaded as Qt1.", registry=registry)
        self.lagged_version = Gauge("mtopt_bellman_lagged_model_version", "Registry version loaded as Qt2.", registry=registry)
        self.duration = Histogram("mtopt_bellman_target_duration_seconds", "Time to compute the targets of one batch.",
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=registry)
        self.mean_target = Gauge("mtopt_bellman_mean_target", "Mean target of the last batch.", registry=registry)
        for reason in ERROR_REASONS:  # export zeros so dashboards and rate() see every series
            self.errors.labels(reason)

    def value(self, name: str, labels: dict | None = None) -> float:
        """Current value of a sample (tests and benchmarks)."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else v
