"""episode_store settings, read from MTOPT_EPISODE_STORE_* environment variables.

Besides the prefixed variables: S3 credentials come from MTOPT_S3_ACCESS_KEY /
MTOPT_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), and the task catalogue from
MTOPT_TASKS (a YAML file; unset: the built-in catalogue). ``python -m mtopt.episode_store
--help-config`` prints every variable.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping

from mtopt.serving.config import check, from_env
from mtopt.serving.s3 import S3Settings, check_s3_settings, read_s3_credentials

PREFIX = "MTOPT_EPISODE_STORE_"
BACKENDS = ("local", "s3")


@dataclasses.dataclass(frozen=True)
class EpisodeStoreConfig(S3Settings):
    """Everything episode_store needs to start; see each field's docstring."""

    port: int = 50051
    """gRPC port to listen on (0 picks a free port)."""
    host: str = "[::]"
    """Address to bind, e.g. [::] for all interfaces or 127.0.0.1."""
    metrics_port: int = 9090
    """Port of the Prometheus /metrics HTTP server (0 picks a free port)."""
    backend: str = "local"
    """Where episodes are stored: local (a directory, the embedded default) or s3 (MinIO or any S3)."""
    directory: Path = Path("data/episodes")
    """Directory of the local backend (one store process per directory)."""
    fsync: bool = True
    """Local backend: fsync every file before acknowledging an upload."""
    watch_settle_s: float = 1.0
    """s3 backend: how long a commit may take to appear in the log (several replicas write
    one bucket); watch events are delayed by this much."""
    commit_gather_s: float = 0.003
    """Group commit: how long a commit-log batch gathers uploads after its first joined, at
    most (fewer storage writes under load; adds at most this much to an upload's latency)."""
    commit_quiet_s: float = 0.001
    """Group commit: a batch also goes once no upload has joined it for this long (few robots
    uploading at once wait less than commit_gather_s)."""
    commit_max_writes: int = 4
    """Group commit: segment writes in flight at once (while all are busy, the next batch keeps
    gathering); more suits object stores with a long request latency."""
    watch_poll_s: float = 0.5
    """How often the store polls the commit log for episodes stored by other replicas."""
    max_episode_bytes: int = 64 * 1024 * 1024
    """Largest serialized episode accepted; bigger uploads get RESOURCE_EXHAUSTED."""
    image_shape: tuple[int, ...] = ()
    """Required image shape H,W,3 (e.g. 64,64,3); empty: any shape, the same within an episode."""
    tasks: Path | None = None
    """Task catalogue YAML (from MTOPT_TASKS); unset: the built-in catalogue."""
    io_workers: int = 16
    """Threads for storage I/O and the validation of larger episodes (streams themselves cost no thread)."""
    inline_validate_bytes: int = 128 * 1024
    """Episodes up to this size are validated and joined to a group commit on the event loop
    itself (about 20 us per KiB), without a hop to the thread pool; larger ones in the pool
    (0: every episode in the pool)."""
    grace_s: float = 10.0
    """On SIGTERM: how long in-flight uploads may run on before they are cancelled."""

    def __post_init__(self):
        v = lambda name: PREFIX + name.upper()  # noqa: E731
        check(0 <= self.port <= 65535, v("port"), f"must be a port number in [0, 65535], got {self.port}")
        check(0 <= self.metrics_port <= 65535, v("metrics_port"), f"must be a port number in [0, 65535], got {self.metrics_port}")
        check(self.backend in BACKENDS, v("backend"), f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "s3":
            check_s3_settings(self, PREFIX)
        check(self.max_episode_bytes > 0, v("max_episode_bytes"), "must be > 0")
        check(self.image_shape == () or (len(self.image_shape) == 3 and self.image_shape[2] == 3 and min(self.image_shape) > 0),
              v("image_shape"), f"must be empty or H,W,3 with positive H and W, got {self.image_shape}")
        check(self.watch_settle_s >= 0, v("watch_settle_s"), "must be >= 0")
        check(self.watch_poll_s > 0, v("watch_poll_s"), "must be > 0")
        check(0 <= self.commit_gather_s <= 1, v("commit_gather_s"), f"must be in [0, 1] seconds, got {self.commit_gather_s}")
        check(0 <= self.commit_quiet_s <= 1, v("commit_quiet_s"), f"must be in [0, 1] seconds, got {self.commit_quiet_s}")
        check(1 <= self.commit_max_writes <= 64, v("commit_max_writes"), f"must be in [1, 64], got {self.commit_max_writes}")
        check(self.io_workers >= 1, v("io_workers"), "must be >= 1")
        check(self.inline_validate_bytes >= 0, v("inline_validate_bytes"), "must be >= 0")
        check(self.grace_s >= 0, v("grace_s"), "must be >= 0")
        if self.tasks is not None:
            check(self.tasks.is_file(), "MTOPT_TASKS", f"must name an existing task catalogue YAML file, got {self.tasks}")


def load_config(environ: Mapping[str, str] | None = None, **overrides) -> EpisodeStoreConfig:
    """EpisodeStoreConfig from the environment (ConfigError names the variable to fix)."""
    env = os.environ if environ is None else environ
    extra = read_s3_credentials(env)
    if env.get("MTOPT_TASKS"):
        extra["tasks"] = Path(env["MTOPT_TASKS"]).expanduser()
    return from_env(EpisodeStoreConfig, PREFIX, env, **(extra | overrides))
