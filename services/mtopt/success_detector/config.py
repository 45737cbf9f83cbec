"""success_detector settings, read from MTOPT_SUCCESS_DETECTOR_* environment variables.

Besides the prefixed variables: S3 credentials from MTOPT_S3_ACCESS_KEY / MTOPT_S3_SECRET_KEY
(or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the task catalogue from MTOPT_TASKS.
``python -m mtopt.success_detector --help-config`` prints every variable.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping

from mtopt.core.config import DEFAULT_TOWER_STEM, TOWER_STEMS
from mtopt.serving.config import check, from_env
from mtopt.serving.s3 import S3Settings, check_s3_settings, read_s3_credentials

PREFIX = "MTOPT_SUCCESS_DETECTOR_"
BACKENDS = ("local", "s3")
DEVICES = ("cpu", "cuda", "auto")


@dataclasses.dataclass(frozen=True)
class SuccessDetectorConfig(S3Settings):
    """Everything success_detector needs to start; see each field's docstring."""

    port: int = 50052
    """gRPC port to listen on (0 picks a free port)."""
    host: str = "[::]"
    """Address to bind, e.g. [::] for all interfaces or 127.0.0.1."""
    metrics_port: int = 9090
    """Port of the Prometheus /metrics HTTP server (0 picks a free port)."""
    registry_address: str = "localhost:50055"
    """gRPC target of model_registry, where SD versions are published (e.g. dns:///mtopt-model-registry:50055)."""
    registry_timeout_s: float = 30.0
    """Deadline of every call to the registry (downloads get more time per byte)."""
    backend: str = "local"
    """Where labelled examples and version records are stored: local (a directory, the embedded default) or s3."""
    directory: Path = Path("data/success_detector")
    """Directory of the local backend (one success_detector process per directory)."""
    fsync: bool = True
    """Local backend: fsync every file before acknowledging a write."""
    image_size: int = 64
    """Side of the square RGB final images the SD takes (examples and Classify images must match)."""
    channels: int = 32
    """Width of the SD network's conv tower (new versions; a loaded version keeps its own)."""
    tower_stem: str = DEFAULT_TOWER_STEM
    """First layers of the SD's conv tower for new versions: patch4 or conv2 (sees object shape better)."""
    train_steps: int = 1500
    """Default gradient steps of a TrainVersion that asks for 0."""
    max_train_steps: int = 100_000
    """Largest train_steps a TrainVersion may ask for."""
    batch_size: int = 64
    """Training minibatch size."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    eval_fraction: float = 0.2
    """Share of the examples held out (by a hash of example_id) for the eval metrics of a version."""
    threshold: float = 0.5
    """P(success) above which an example counts as predicted successful in the eval accuracy."""
    device: str = "cpu"
    """Torch device for training and inference: cpu, cuda, or auto (cuda when available)."""
    max_loaded_versions: int = 4
    """SD versions kept loaded for Classify (least recently used evicted), so old ones stay usable for relabelling."""
    max_classify_images: int = 1024
    """Most images in one Classify request (more: RESOURCE_EXHAUSTED)."""
    max_examples_per_request: int = 1024
    """Most examples in one AddExamples request (more: RESOURCE_EXHAUSTED)."""
    max_pending_versions: int = 4
    """Most versions waiting or training at once (more: RESOURCE_EXHAUSTED)."""
    inference_workers: int = 1
    """Threads running the network for Classify (the event loop never runs it)."""
    io_workers: int = 8
    """Threads for storage and registry I/O."""
    train_timeout_s: float = 3600.0
    """s3 backend: a version left PENDING/TRAINING (by a replica that died) for longer is marked FAILED at start."""
    refresh_s: float = 5.0
    """How often to re-read the serving version from the registry (replicas follow promotions)."""
    grace_s: float = 10.0
    """On SIGTERM: how long in-flight calls may run on before they are cancelled."""

    def __post_init__(self):
        v = lambda name: PREFIX + name.upper()  # noqa: E731
        check(0 <= self.port <= 65535, v("port"), f"must be a port number in [0, 65535], got {self.port}")
        check(0 <= self.metrics_port <= 65535, v("metrics_port"), f"must be a port number in [0, 65535], got {self.metrics_port}")
        check(bool(self.registry_address), v("registry_address"), "must be the gRPC target of model_registry, e.g. localhost:50055")
        check(self.registry_timeout_s > 0, v("registry_timeout_s"), "must be > 0")
        check(self.backend in BACKENDS, v("backend"), f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "s3":
            check_s3_settings(self, PREFIX)
        check(self.image_size >= 8 and self.image_size % 8 == 0, v("image_size"), f"must be a multiple of 8, >= 8, got {self.image_size}")
        check(self.channels >= 1, v("channels"), "must be >= 1")
        check(self.tower_stem in TOWER_STEMS, v("tower_stem"), f"must be one of {', '.join(TOWER_STEMS)}, got {self.tower_stem!r}")
        check(1 <= self.train_steps <= self.max_train_steps, v("train_steps"), f"must lie in [1, {v('max_train_steps')}={self.max_train_steps}]")
        check(self.batch_size >= 1, v("batch_size"), "must be >= 1")
        check(self.learning_rate > 0, v("learning_rate"), "must be > 0")
        check(0.0 <= self.eval_fraction < 1.0, v("eval_fraction"), f"must lie in [0, 1), got {self.eval_fraction}")
        check(0.0 < self.threshold < 1.0, v("threshold"), f"must lie in (0, 1), got {self.threshold}")
        check(self.device in DEVICES, v("device"), f"must be one of {', '.join(DEVICES)}, got {self.device!r}")
        check(self.max_loaded_versions >= 1, v("max_loaded_versions"), "must be >= 1")
        check(self.max_classify_images >= 1, v("max_classify_images"), "must be >= 1")
        check(self.max_examples_per_request >= 1, v("max_examples_per_request"), "must be >= 1")
        check(self.max_pending_versions >= 1, v("max_pending_versions"), "must be >= 1")
        check(self.inference_workers >= 1, v("inference_workers"), "must be >= 1")
        check(self.io_workers >= 1, v("io_workers"), "must be >= 1")
        check(self.train_timeout_s > 0, v("train_timeout_s"), "must be > 0")
        check(self.refresh_s > 0, v("refresh_s"), "must be > 0")
        check(self.grace_s >= 0, v("grace_s"), "must be >= 0")

    def torch_device(self) -> str:
        """The torch device name ``device`` stands for on this machine."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def load_config(environ: Mapping[str, str] | None = None, **overrides) -> SuccessDetectorConfig:
    """SuccessDetectorConfig from the environment (ConfigError names the variable to fix)."""
    env = os.environ if environ is None else environ
    extra = read_s3_credentials(env)
    return from_env(SuccessDetectorConfig, PREFIX, env, **(extra | overrides))
