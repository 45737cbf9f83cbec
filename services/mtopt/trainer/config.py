"""trainer settings, read from MTOPT_TRAINER_* environment variables.

Besides the prefixed variables: S3 credentials for the checkpoint store come from
MTOPT_S3_ACCESS_KEY / MTOPT_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), and
the task catalogue from MTOPT_TASKS (a YAML file; unset: the built-in catalogue).
``python -m mtopt.trainer --help-config`` prints every variable.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping

from mtopt.core.config import TOWER_STEMS, MTOptConfig
from mtopt.serving.config import check, from_env
from mtopt.serving.s3 import S3Settings, check_s3_settings, read_s3_credentials

PREFIX = "MTOPT_TRAINER_"
BACKENDS = ("local", "s3")
DEVICES = ("cpu", "cuda", "auto")
_ALGO = MTOptConfig()


@dataclasses.dataclass(frozen=True)
class TrainerConfig(S3Settings):
    """Everything the trainer needs to start; see each field's docstring."""

    port: int = 50056
    """gRPC port to listen on (0 picks a free port)."""
    host: str = "[::]"
    """Address to bind, e.g. [::] for all interfaces or 127.0.0.1."""
    metrics_port: int = 9090
    """Port of the Prometheus /metrics HTTP server (0 picks a free port)."""
    registry_address: str = "localhost:50055"
    """gRPC target of model_registry, e.g. dns:///mtopt-model-registry:50055."""
    model: str = "q_function"
    """Registry model name the trainer publishes to."""
    registry_timeout_s: float = 30.0
    """Deadline of each registry call (publishing large weights gets more on top)."""
    backend: str = "local"
    """Where checkpoints are stored: local (a directory, the embedded default) or s3 (MinIO or any S3)."""
    directory: Path = Path("data/trainer")
    """Directory of the local checkpoint backend (one trainer per directory)."""
    fsync: bool = True
    """Local backend: fsync every checkpoint file before the pointer moves to it."""
    tasks: Path | None = None
    """Task catalogue YAML (from MTOPT_TASKS); unset: the built-in catalogue."""
    buffer_capacity_rows: int = 8192
    """Train buffer capacity in rows; a batch that does not fit is refused (back-pressure)."""
    min_buffer_rows: int = 512
    """Training waits (starved) while the buffer holds fewer rows than this (and than batch_size)."""
    max_row_uses: int = 4
    """Each row is dropped after this many SGD samples, so targets stay fresh."""
    max_batch_rows: int = 512
    """Largest PushTargets batch accepted (bigger: RESOURCE_EXHAUSTED); at most buffer_capacity_rows - min_buffer_rows.
    Keep batches under the gRPC message limit (8 MiB: about 680 rows of 64x64 images)."""
    dedup_memory: int = 100_000
    """Number of recently accepted batch ids remembered for de-duplication."""
    batch_size: int = _ALGO.batch_size
    """Rows per SGD step."""
    learning_rate: float = _ALGO.learning_rate
    """Adam learning rate."""
    weight_decay: float = _ALGO.weight_decay
    """Adam weight decay."""
    grad_clip: float = _ALGO.grad_clip
    """Gradient-norm clip."""
    polyak_tau: float = _ALGO.polyak_tau
    """Qt1 <- (1 - tau) Qt1 + tau Q after every step (Qt1 is published as target.pt)."""
    image_size: int = _ALGO.image_size
    """Input images are image_size x image_size RGB (multiple of 8)."""
    channels: int = _ALGO.channels
    """Width of the Q-network's conv tower and head."""
    multi_head: bool = _ALGO.multi_head
    """Ablation only: one output head per task."""
    tower_stem: str = _ALGO.tower_stem
    """First layers of the conv tower: patch4 or conv2 (sees object shape; ~3x the tower's arithmetic)."""
    point_readout: bool = _ALGO.point_readout
    """The Q-head also reads the feature map at the action's point (named in the network label)."""
    publish_every_steps: int = 500
    """Publish a new q_function version every this many SGD steps."""
    checkpoint_every_steps: int = 1000
    """Write a training checkpoint every this many SGD steps (and on SIGTERM)."""
    keep_checkpoints: int = 2
    """Checkpoint slots written in turn (>= 2: the pointer never names the slot being written)."""
    device: str = "auto"
    """Torch device: cpu, cuda, or auto (cuda when available)."""
    threads: int = 0
    """torch.set_num_threads for the process; 0 leaves torch's default."""
    seed: int = 0
    """Seed of the initial weights and of buffer sampling."""
    grace_s: float = 10.0
    """On SIGTERM: how long in-flight calls may run on before they are cancelled (then a checkpoint is written)."""

    def __post_init__(self):
        v = lambda name: PREFIX + name.upper()  # noqa: E731
        check(0 <= self.port <= 65535, v("port"), f"must be a port number in [0, 65535], got {self.port}")
        check(0 <= self.metrics_port <= 65535, v("metrics_port"), f"must be a port number in [0, 65535], got {self.metrics_port}")
        check(bool(self.registry_address), v("registry_address"), "must be the gRPC target of model_registry, e.g. localhost:50055")
        check(bool(self.model), v("model"), "must name the registry model, e.g. q_function")
        check(self.registry_timeout_s > 0, v("registry_timeout_s"), "must be > 0")
        check(self.backend in BACKENDS, v("backend"), f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "s3":
            check_s3_settings(self, PREFIX)
        if self.tasks is not None:
            check(self.tasks.is_file(), "MTOPT_TASKS", f"must name an existing task catalogue YAML file, got {self.tasks}")
        check(self.batch_size >= 1, v("batch_size"), "must be >= 1")
        check(self.buffer_capacity_rows >= self.batch_size, v("buffer_capacity_rows"), f"must be >= {v('batch_size')} ({self.batch_size})")
        check(0 <= self.min_buffer_rows <= self.buffer_capacity_rows, v("min_buffer_rows"),
              f"must lie in [0, {v('buffer_capacity_rows')}={self.buffer_capacity_rows}]")
        check(self.max_row_uses >= 1, v("max_row_uses"), "must be >= 1")
        check(1 <= self.max_batch_rows <= self.buffer_capacity_rows - self.min_buffer_rows, v("max_batch_rows"),
              f"must lie in [1, {v('buffer_capacity_rows')} - {v('min_buffer_rows')} = {self.buffer_capacity_rows - self.min_buffer_rows}] "
              "(so a starved trainer always has room for a batch)")
        check(self.dedup_memory >= 1, v("dedup_memory"), "must be >= 1")
        check(self.learning_rate > 0, v("learning_rate"), "must be > 0")
        check(self.weight_decay >= 0, v("weight_decay"), "must be >= 0")
        check(self.grad_clip > 0, v("grad_clip"), "must be > 0")
        check(0 < self.polyak_tau <= 1, v("polyak_tau"), "must lie in (0, 1]")
        check(self.image_size >= 8 and self.image_size % 8 == 0, v("image_size"), f"must be a positive multiple of 8, got {self.image_size}")
        check(self.channels >= 1, v("channels"), "must be >= 1")
        check(self.tower_stem in TOWER_STEMS, v("tower_stem"), f"must be one of {', '.join(TOWER_STEMS)}, got {self.tower_stem!r}")
        check(self.publish_every_steps >= 1, v("publish_every_steps"), "must be >= 1")
        check(self.checkpoint_every_steps >= 1, v("checkpoint_every_steps"), "must be >= 1")
        check(self.keep_checkpoints >= 2, v("keep_checkpoints"), "must be >= 2")
        check(self.device in DEVICES, v("device"), f"must be one of {', '.join(DEVICES)}, got {self.device!r}")
        check(self.threads >= 0, v("threads"), "must be >= 0")
        check(self.grace_s >= 0, v("grace_s"), "must be >= 0")

    def algo(self) -> MTOptConfig:
        """The learning hyperparameters as the core's MTOptConfig."""
        return dataclasses.replace(
            _ALGO, image_size=self.image_size, channels=self.channels, multi_head=self.multi_head, tower_stem=self.tower_stem,
            point_readout=self.point_readout,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay, batch_size=self.batch_size, grad_clip=self.grad_clip, polyak_tau=self.polyak_tau,
        )


def load_config(environ: Mapping[str, str] | None = None, **overrides) -> TrainerConfig:
    """TrainerConfig from the environment (ConfigError names the variable to fix)."""
    env = os.environ if environ is None else environ
    extra = read_s3_credentials(env)
    if env.get("MTOPT_TASKS"):
        extra["tasks"] = Path(env["MTOPT_TASKS"]).expanduser()
    return from_env(TrainerConfig, PREFIX, env, **(extra | overrides))
