"""model_registry's Prometheus metrics, on the registry the server gives it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REJECT_REASONS = (
    "no_header", "invalid_header", "invalid_model", "invalid_name", "too_large", "truncated", "size_mismatch",
    "sha256_mismatch", "unknown_artifact", "out_of_order", "conflict", "not_found", "invalid_request",
    "failed_precondition", "out_of_range", "cancelled",
)


class RegistryMetrics:
    """All model_registry metrics (names per DESIGN.md section 8)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.published = Counter(
            "mtopt_model_registry_versions_published_total", "Versions published through this replica (idempotent retries excluded).",
            ["model"], registry=registry,
        )
        self.published_bytes = Counter(
            "mtopt_model_registry_published_bytes_total", "Artifact bytes stored by publishes through this replica.", ["model"], registry=registry
        )
        self.duplicates = Counter(
            "mtopt_model_registry_duplicate_publishes_total", "Publishes of an already published publish_id (idempotent no-ops).",
            registry=registry,
        )
        self.rejected = Counter(
            "mtopt_model_registry_rejected_total", "Calls rejected for bad input, by reason; nothing was stored.", ["reason"], registry=registry
        )
        self.storage_errors = Counter(
            "mtopt_model_registry_storage_errors_total", "Calls failed because the storage backend did not answer.", ["operation"], registry=registry
        )
        self.events = Counter(
            "mtopt_model_registry_events_total", "Events appended to the event logs (all replicas), by type.", ["model", "type"], registry=registry
        )
        self.latest_version = Gauge(
            "mtopt_model_registry_latest_version", "Version the \"latest\" alias points at.", ["model"], registry=registry
        )
        self.pinned_robots = Gauge("mtopt_model_registry_pinned_robots", "Robots pinned to a version.", ["model"], registry=registry)
        self.watch_streams = Gauge("mtopt_model_registry_watch_streams", "Open WatchVersions streams.", registry=registry)
        self.artifact_bytes_sent = Counter(
            "mtopt_model_registry_artifact_bytes_sent_total", "Artifact bytes streamed by GetArtifact.", registry=registry
        )
        self.publish_seconds = Histogram(
            "mtopt_model_registry_publish_duration_seconds", "Time from first chunk to acknowledgement of a publish.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=registry,
        )
        for reason in REJECT_REASONS:  # export zeros so dashboards and rate() see every series
            self.rejected.labels(reason)

    def observe_events(self, model: str, events, state) -> None:
        """Registry listener: counts events and sets the per-model gauges."""
        for e in events:
            self.events.labels(model, e.type).inc()
        self.latest_version.labels(model).set(state.aliases.get("latest", 0))
        self.pinned_robots.labels(model).set(len(state.pins))

    def value(self, name: str, labels: dict | None = None) -> float:
        """Current value of a sample (tests and benchmarks)."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else v
