"""episode_store's Prometheus metrics, on the registry the server gives it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REJECT_REASONS = (
    "no_header", "invalid_header", "invalid_id", "too_large", "truncated", "size_mismatch",
    "sha256_mismatch", "malformed", "header_mismatch", "unknown_task", "image", "action", "state",
    "conflict", "not_found", "invalid_request", "cancelled",
)


class StoreMetrics:
    """All episode_store metrics (names per DESIGN.md section 8)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.stored = Counter(
            "mtopt_episode_store_episodes_stored_total", "Episodes committed (re-uploads excluded).", ["task"], registry=registry
        )
        self.stored_bytes = Counter(
            "mtopt_episode_store_stored_bytes_total", "Bytes of serialized episodes committed.", ["task"], registry=registry
        )
        self.duplicates = Counter(
            "mtopt_episode_store_duplicate_uploads_total", "Uploads of an already stored episode (idempotent no-ops).", registry=registry
        )
        self.rejected = Counter(
            "mtopt_episode_store_rejected_total", "Calls rejected for bad input, by reason; nothing was stored.", ["reason"], registry=registry
        )
        self.storage_errors = Counter(
            "mtopt_episode_store_storage_errors_total", "Calls failed because the storage backend did not answer.", ["operation"], registry=registry
        )
        self.upload_seconds = Histogram(
            "mtopt_episode_store_upload_duration_seconds", "Time from first chunk to acknowledgement of an upload.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=registry,
        )
        self.commit_batches = Counter(
            "mtopt_episode_store_commit_batches_total", "Commit-log segments written (group commit of concurrent uploads).", registry=registry
        )
        self.commit_batch_episodes = Histogram(
            "mtopt_episode_store_commit_batch_episodes", "Episodes committed per commit-log segment.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=registry,
        )
        self.indexed_episodes = Gauge(
            "mtopt_episode_store_indexed_episodes", "Episode ids in this replica's id index (memory grows with it).", registry=registry
        )
        self.uploads_in_flight = Gauge("mtopt_episode_store_uploads_in_flight", "Uploads being received or stored.", registry=registry)
        self.watch_streams = Gauge("mtopt_episode_store_watch_streams", "Open WatchEpisodes streams.", registry=registry)
        for reason in REJECT_REASONS:  # export zeros so dashboards and rate() see every series
            self.rejected.labels(reason)

    def observe_commit(self, episodes: int) -> None:
        """One commit-log batch of ``episodes`` was written (called from the committer thread)."""
        self.commit_batches.inc()
        self.commit_batch_episodes.observe(episodes)

    def value(self, name: str, labels: dict | None = None) -> float:
        """Current value of a sample (tests and benchmarks)."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else v
