"""log_replay settings, read from MTOPT_LOG_REPLAY_* environment variables.

Besides the prefixed variables: S3 credentials come from MTOPT_S3_ACCESS_KEY /
MTOPT_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), and the task catalogue from
MTOPT_TASKS (a YAML file; unset: the built-in catalogue). ``python -m mtopt.log_replay
--help-config`` prints every variable.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Mapping

from mtopt.serving.config import check, from_env
from mtopt.serving.malloc import MMAP_THRESHOLD_MAX
from mtopt.serving.s3 import S3Settings, check_s3_settings, read_s3_credentials

PREFIX = "MTOPT_LOG_REPLAY_"
BACKENDS = ("local", "s3")
IMPERSONATION_MODES = ("orig", "all", "skill")


@dataclasses.dataclass(frozen=True)
class LogReplayConfig(S3Settings):
    """Everything log_replay needs to start; see each field's docstring."""

    port: int = 50053
    """gRPC port to listen on (0 picks a free port)."""
    host: str = "[::]"
    """Address to bind, e.g. [::] for all interfaces or 127.0.0.1."""
    metrics_port: int = 9090
    """Port of the Prometheus /metrics HTTP server (0 picks a free port)."""
    store_address: str = "localhost:50051"
    """gRPC target of episode_store, e.g. dns:///mtopt-episode-store:50051."""
    success_detector_address: str = "localhost:50052"
    """gRPC target of success_detector, e.g. dns:///mtopt-success-detector:50052."""
    impersonation: str = "skill"
    """Which tasks an episode trains: orig (its own), all (every task) or skill (its skill's tasks)."""
    buffer_bytes: int = 2 << 30
    """Memory budget of the buffered episodes (decoded arrays plus ~1.5 KiB of objects each); the
    oldest are evicted beyond it."""
    success_fraction: float = 0.5
    """Default share of each task's transitions drawn from successful episodes."""
    sd_threshold: float = 0.5
    """An episode succeeded at a task when the SD's probability is >= this."""
    step_penalty: float = 0.0
    """Reward of every non-final transition is minus this (0: sparse reward only)."""
    min_transitions_per_task: int = 1
    """A task takes part in sampling once its buffer holds at least this many transitions."""
    min_total_transitions: int = 1
    """SampleBatches waits until the sampled tasks hold at least this many transitions together."""
    max_batch_size: int = 8192
    """Largest SampleBatches batch_size accepted (INVALID_ARGUMENT above)."""
    classify_batch: int = 32
    """Episodes labelled per success_detector Classify call."""
    read_ahead: int = 256
    """Watch events buffered ahead of processing (bounds memory while backfilling)."""
    fetch_concurrency: int = 8
    """GetEpisode calls in flight at once."""
    call_timeout_s: float = 10.0
    """Deadline of every unary call to episode_store and success_detector."""
    retry_backoff_s: float = 0.2
    """First wait before retrying a failed dependency call (doubles up to 5 s)."""
    sd_poll_s: float = 30.0
    """How often to ask the SD for its serving version; a new one triggers relabelling."""
    backend: str = "local"
    """Where the cursor is persisted: local (a directory) or s3 (object log_replay/cursor.json)."""
    directory: Path = Path("data/log_replay")
    """Directory of the local cursor backend (one log_replay process per directory)."""
    fsync: bool = True
    """Local backend: fsync the cursor file on every write."""
    tasks: Path | None = None
    """Task catalogue YAML (from MTOPT_TASKS); unset: the built-in catalogue."""
    io_workers: int = 4
    """Threads for decoding, sampling, tensor encoding and cursor I/O."""
    grace_s: float = 10.0
    """On SIGTERM: how long open SampleBatches streams may run on before they are cancelled."""
    malloc_mmap_threshold_bytes: int = MMAP_THRESHOLD_MAX
    """glibc malloc: allocations up to this size come from the heap, not a fresh mmap (<= 32 MiB;
    0 leaves glibc's defaults, and then the trim threshold too). Sample batches are megabytes."""
    malloc_trim_threshold_bytes: int = 64 << 20
    """glibc malloc: free heap above this size goes back to the kernel."""
    malloc_arena_max: int = 2
    """glibc malloc: at most this many arenas (0: glibc's default, 8 per core). The io_workers
    threads that decode episodes otherwise each keep an arena of free memory beside the budget."""

    def __post_init__(self):
        v = lambda name: PREFIX + name.upper()  # noqa: E731
        check(0 <= self.port <= 65535, v("port"), f"must be a port number in [0, 65535], got {self.port}")
        check(0 <= self.metrics_port <= 65535, v("metrics_port"), f"must be a port number in [0, 65535], got {self.metrics_port}")
        check(bool(self.store_address), v("store_address"), "must be the gRPC target of episode_store, e.g. localhost:50051")
        check(bool(self.success_detector_address), v("success_detector_address"),
              "must be the gRPC target of success_detector, e.g. localhost:50052")
        check(self.impersonation in IMPERSONATION_MODES, v("impersonation"),
              f"must be one of {', '.join(IMPERSONATION_MODES)}, got {self.impersonation!r}")
        check(self.buffer_bytes > 0, v("buffer_bytes"), "must be > 0")
        check(0.0 <= self.success_fraction <= 1.0, v("success_fraction"), f"must lie in [0, 1], got {self.success_fraction}")
        check(0.0 <= self.sd_threshold <= 1.0, v("sd_threshold"), f"must lie in [0, 1], got {self.sd_threshold}")
        check(math.isfinite(self.step_penalty) and self.step_penalty >= 0, v("step_penalty"), "must be a finite number >= 0")
        check(self.min_transitions_per_task >= 1, v("min_transitions_per_task"), "must be >= 1")
        check(self.min_total_transitions >= 1, v("min_total_transitions"), "must be >= 1")
        check(self.max_batch_size >= 1, v("max_batch_size"), "must be >= 1")
        check(self.classify_batch >= 1, v("classify_batch"), "must be >= 1")
        check(self.read_ahead >= 1, v("read_ahead"), "must be >= 1")
        check(self.fetch_concurrency >= 1, v("fetch_concurrency"), "must be >= 1")
        check(self.call_timeout_s > 0, v("call_timeout_s"), "must be > 0")
        check(self.retry_backoff_s > 0, v("retry_backoff_s"), "must be > 0")
        check(self.sd_poll_s > 0, v("sd_poll_s"), "must be > 0")
        check(self.backend in BACKENDS, v("backend"), f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "s3":
            check_s3_settings(self, PREFIX)
        check(self.io_workers >= 1, v("io_workers"), "must be >= 1")
        check(self.grace_s >= 0, v("grace_s"), "must be >= 0")
        check(0 <= self.malloc_mmap_threshold_bytes <= MMAP_THRESHOLD_MAX, v("malloc_mmap_threshold_bytes"),
              f"must lie in [0, {MMAP_THRESHOLD_MAX}] (0: glibc's defaults), got {self.malloc_mmap_threshold_bytes}")
        check(self.malloc_trim_threshold_bytes >= 0, v("malloc_trim_threshold_bytes"), "must be >= 0")
        check(self.malloc_arena_max >= 0, v("malloc_arena_max"), f"must be >= 0 (0: glibc's default), got {self.malloc_arena_max}")
        if self.tasks is not None:
            check(self.tasks.is_file(), "MTOPT_TASKS", f"must name an existing task catalogue YAML file, got {self.tasks}")


def load_config(environ: Mapping[str, str] | None = None, **overrides) -> LogReplayConfig:
    """LogReplayConfig from the environment (ConfigError names the variable to fix)."""
    env = os.environ if environ is None else environ
    extra = read_s3_credentials(env)
    if env.get("MTOPT_TASKS"):
        extra["tasks"] = Path(env["MTOPT_TASKS"]).expanduser()
    return from_env(LogReplayConfig, PREFIX, env, **(extra | overrides))
