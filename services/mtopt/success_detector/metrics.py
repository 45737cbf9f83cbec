"""success_detector's Prometheus metrics, on the registry the server gives it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REJECT_REASONS = (
    "invalid_request", "invalid_example", "invalid_image", "unknown_task", "unknown_version", "no_ready_version",
    "version_not_ready", "no_examples", "too_large", "busy", "unavailable",
)
TRAIN_RESULTS = ("ready", "failed")
LABELS = ("positive", "negative")


class SdMetrics:
    """All success_detector metrics (names per DESIGN.md section 8)."""

    def __init__(self, registry: CollectorRegistry, tasks: list[str]):
        self.registry = registry
        self.images_classified = Counter(
            "mtopt_success_detector_images_classified_total", "Images scored by Classify (each for every requested task).", registry=registry
        )
        self.classify_seconds = Histogram(
            "mtopt_success_detector_classify_duration_seconds", "Time to answer a Classify call (load, decode and inference).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=registry,
        )
        self.examples = Gauge(
            "mtopt_success_detector_examples", "Labelled examples stored, per task and label.", ["task", "label"], registry=registry
        )
        self.examples_added = Counter(
            "mtopt_success_detector_examples_added_total", "Examples newly stored by AddExamples through this replica.", ["task"], registry=registry
        )
        self.duplicate_examples = Counter(
            "mtopt_success_detector_duplicate_examples_total", "Examples skipped by AddExamples because their example_id was stored.",
            registry=registry,
        )
        self.serving_version = Gauge(
            "mtopt_success_detector_serving_version", "SD version Classify uses when a request names none (0: none READY).", registry=registry
        )
        self.loaded_versions = Gauge("mtopt_success_detector_loaded_versions", "SD versions loaded for Classify.", registry=registry)
        self.train_runs = Counter(
            "mtopt_success_detector_train_runs_total", "Training runs finished by this replica, by result.", ["result"], registry=registry
        )
        self.eval_accuracy = Gauge(
            "mtopt_success_detector_eval_accuracy", "Held-out accuracy of the serving version, per task.", ["task"], registry=registry
        )
        self.rejected = Counter(
            "mtopt_success_detector_rejected_total", "Calls rejected for bad input or state, by reason; nothing was stored.", ["reason"],
            registry=registry,
        )
        for reason in REJECT_REASONS:  # export zeros so dashboards and rate() see every series
            self.rejected.labels(reason)
        for result in TRAIN_RESULTS:
            self.train_runs.labels(result)
        for task in tasks:
            self.examples_added.labels(task)
            for label in LABELS:
                self.examples.labels(task, label)

    def set_examples(self, task: str, success: bool, count: int) -> None:
        self.examples.labels(task, LABELS[0] if success else LABELS[1]).set(count)

    def on_version(self, event: str, record) -> None:
        """VersionManager listener."""
        if event in TRAIN_RESULTS:
            self.train_runs.labels(event).inc()
        elif event == "serving":
            self.serving_version.set(record.version if record is not None and record.state == "READY" else 0)
            if record is not None:
                for task in record.tasks:
                    value = record.metrics.get(f"eval/accuracy/{task}")
                    if value is not None:
                        self.eval_accuracy.labels(task).set(value)

    def value(self, name: str, labels: dict | None = None) -> float:
        """Current value of a sample (tests and benchmarks)."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else v
