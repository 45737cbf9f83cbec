"""The trainer's Prometheus metrics, on the registry the server gives it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REJECT_REASONS = ("backpressure", "invalid", "too_large")


class TrainerMetrics:
    """All trainer metrics (names per DESIGN.md section 8)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.steps = Counter("mtopt_trainer_steps_total", "SGD steps done since the process started.", registry=registry)
        self.step = Gauge("mtopt_trainer_step", "Current trainer step (continues across restarts).", registry=registry)
        self.loss = Gauge("mtopt_trainer_loss", "Cross-entropy loss of the last SGD step.", registry=registry)
        self.loss_ema = Gauge("mtopt_trainer_loss_ema", "Exponential moving average of the loss.", registry=registry)
        self.buffer_rows = Gauge("mtopt_trainer_buffer_rows", "Rows in the train buffer.", registry=registry)
        self.buffer_capacity = Gauge("mtopt_trainer_buffer_capacity_rows", "Capacity of the train buffer in rows.", registry=registry)
        self.accepted = Counter("mtopt_trainer_batches_accepted_total", "PushTargets batches stored in the buffer.", registry=registry)
        self.duplicates = Counter("mtopt_trainer_batches_duplicate_total", "PushTargets batches already stored (retries).",
                                  registry=registry)
        self.rejected = Counter("mtopt_trainer_batches_rejected_total", "PushTargets batches refused, by reason; nothing was stored.",
                                ["reason"], registry=registry)
        self.rows_accepted = Counter("mtopt_trainer_rows_accepted_total", "Target rows stored in the buffer.", registry=registry)
        self.starved = Counter("mtopt_trainer_starved_seconds_total", "Time the training loop waited for the buffer to fill.",
                               registry=registry)
        self.published_version = Gauge("mtopt_trainer_published_version", "Last registry version published.", registry=registry)
        self.publishes = Counter("mtopt_trainer_publishes_total", "Versions published to the registry.", registry=registry)
        self.publish_errors = Counter("mtopt_trainer_publish_errors_total", "Publishes that failed (retried at the next interval).",
                                      registry=registry)
        self.checkpoints = Counter("mtopt_trainer_checkpoints_total", "Checkpoints written.", registry=registry)
        self.checkpoint_step = Gauge("mtopt_trainer_checkpoint_step", "Step of the last checkpoint written.", registry=registry)
        self.step_seconds = Histogram(
            "mtopt_trainer_step_duration_seconds", "Wall time of one SGD step (sampling included).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=registry,
        )
        for reason in REJECT_REASONS:  # export zeros so dashboards and rate() see every series
            self.rejected.labels(reason)

    def value(self, name: str, labels: dict | None = None) -> float:
        """Current value of a sample (tests and benchmarks)."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else v
