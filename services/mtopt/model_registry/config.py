"""model_registry settings, read from MTOPT_MODEL_REGISTRY_* environment variables.

Besides the prefixed variables, S3 credentials come from MTOPT_S3_ACCESS_KEY /
MTOPT_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), as for episode_store.
``python -m mtopt.model_registry --help-config`` prints every variable.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping

from mtopt.model_registry.layout import ALIAS_PATTERN
from mtopt.serving.config import check, from_env
from mtopt.serving.s3 import S3Settings, check_s3_settings, read_s3_credentials

PREFIX = "MTOPT_MODEL_REGISTRY_"
BACKENDS = ("local", "s3")


@dataclasses.dataclass(frozen=True)
class ModelRegistryConfig(S3Settings):
    """Everything model_registry needs to start; see each field's docstring."""

    port: int = 50055
    """gRPC port to listen on (0 picks a free port)."""
    host: str = "[::]"
    """Address to bind, e.g. [::] for all interfaces or 127.0.0.1."""
    metrics_port: int = 9090
    """Port of the Prometheus /metrics HTTP server (0 picks a free port)."""
    backend: str = "local"
    """Where versions are stored: local (a directory, the embedded default) or s3 (MinIO or any S3)."""
    directory: Path = Path("data/models")
    """Directory of the local backend (one registry process per directory)."""
    fsync: bool = True
    """Local backend: fsync every file before acknowledging a write."""
    default_alias: str = "stable"
    """Alias that Resolve and robot watches follow when the request names none."""
    max_artifact_bytes: int = 256 * 1024 * 1024
    """Largest single artifact accepted by Publish; bigger ones get RESOURCE_EXHAUSTED."""
    max_version_bytes: int = 512 * 1024 * 1024
    """Largest total of one version's artifacts (a publish is held in memory until verified)."""
    chunk_bytes: int = 1024 * 1024
    """Size of the data chunks GetArtifact streams."""
    poll_s: float = 0.5
    """s3 backend: how often to read the event log for changes made by other replicas."""
    snapshot_every: int = 256
    """Write a state snapshot (faster restarts) after this many events of a model."""
    event_ring: int = 10_000
    """Events per model kept in memory for watch streams; older resumes read the log."""
    io_workers: int = 16
    """Threads for storage I/O (streams themselves cost no thread)."""
    grace_s: float = 10.0
    """On SIGTERM: how long in-flight calls may run on before they are cancelled."""

    def __post_init__(self):
        v = lambda name: PREFIX + name.upper()  # noqa: E731
        check(0 <= self.port <= 65535, v("port"), f"must be a port number in [0, 65535], got {self.port}")
        check(0 <= self.metrics_port <= 65535, v("metrics_port"), f"must be a port number in [0, 65535], got {self.metrics_port}")
        check(self.backend in BACKENDS, v("backend"), f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "s3":
            check_s3_settings(self, PREFIX)
        check(bool(ALIAS_PATTERN.match(self.default_alias)), v("default_alias"), f"must match [a-z0-9_-]+ (e.g. stable or latest), got {self.default_alias!r}")
        check(self.max_artifact_bytes > 0, v("max_artifact_bytes"), "must be > 0")
        check(self.max_version_bytes >= self.max_artifact_bytes, v("max_version_bytes"), f"must be >= {v('max_artifact_bytes')} ({self.max_artifact_bytes})")
        check(4096 <= self.chunk_bytes <= 4 * 1024 * 1024, v("chunk_bytes"), f"must lie in [4096, 4194304], got {self.chunk_bytes}")
        check(self.poll_s > 0, v("poll_s"), "must be > 0")
        check(self.snapshot_every >= 1, v("snapshot_every"), "must be >= 1")
        check(self.event_ring >= 100, v("event_ring"), "must be >= 100")
        check(self.io_workers >= 1, v("io_workers"), "must be >= 1")
        check(self.grace_s >= 0, v("grace_s"), "must be >= 0")


def load_config(environ: Mapping[str, str] | None = None, **overrides) -> ModelRegistryConfig:
    """ModelRegistryConfig from the environment (ConfigError names the variable to fix)."""
    env = os.environ if environ is None else environ
    extra = read_s3_credentials(env)
    return from_env(ModelRegistryConfig, PREFIX, env, **(extra | overrides))
