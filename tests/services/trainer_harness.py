"""trainer harness for the service tests (and for bellman's): a trainer in the test loop thread
wired to a real model_registry harness, restartable on the same port, with a sync stub.

Fixture ``make_trainer(registry=None, **config_overrides)`` starts one (a fresh registry from
``make_registry`` unless one is given); import it into a test module with
``from trainer_harness import make_trainer  # noqa: F401 - fixture``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest

from harness_factory import ServiceHarness, closing_factory
from registry_harness import RegistryHarness
from store_harness import CHANNEL_OPTIONS, LoopThread, MinioInfo
from mtopt.episode_codec import tensor_to_proto
from mtopt.trainer import TrainerConfig, start_trainer
from mtopt.v1 import bellman_pb2, trainer_pb2_grpc

IMAGE_SIZE = 16


def trainer_config(tmp_path: Path, kind: str, minio: MinioInfo | None, registry_address: str, **overrides) -> TrainerConfig:
    base = dict(port=0, host="127.0.0.1", metrics_port=0, grace_s=2.0, registry_address=registry_address, registry_timeout_s=20,
                image_size=IMAGE_SIZE, channels=8, batch_size=8, min_buffer_rows=16, buffer_capacity_rows=64, max_batch_rows=32,
                publish_every_steps=5, checkpoint_every_steps=10, device="cpu", max_row_uses=2, learning_rate=1e-3)
    if kind == "local":
        base.update(backend="local", directory=tmp_path / f"trainer-{uuid.uuid4().hex[:6]}", fsync=False)
    else:
        assert minio is not None
        base.update(backend="s3", s3_endpoint=minio.endpoint, s3_bucket=minio.new_bucket_name(),
                    s3_access_key=minio.access_key, s3_secret_key=minio.secret_key)
    base.update(overrides)
    return TrainerConfig(**base)


class TrainerHarness(ServiceHarness):
    """A trainer in the test loop thread plus a sync stub; restartable on the same port."""

    def __init__(self, loop: LoopThread, config: TrainerConfig, registry: RegistryHarness | None = None, wait_ready: bool = True):
        self.loop, self.config, self.registry = loop, config, registry
        self.server = None
        self.start(wait_ready)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}", options=CHANNEL_OPTIONS)
        self.stub = trainer_pb2_grpc.TrainerStub(self.channel)

    @property
    def trainer(self):
        return self.server.trainer

    def _start_server(self):
        return start_trainer(self.config, readiness_interval_s=0.2)


    def push(self, batch: bellman_pb2.TargetBatch, timeout: float = 20):
        return self.stub.PushTargets(batch, timeout=timeout)

    def close(self) -> None:
        self.channel.close()
        self.stop(grace_s=0.5)


def target_batch(batch_id: str, rows: int = 8, *, image_size: int = IMAGE_SIZE, seed: int = 0, num_tasks: int = 4,
                 **replace) -> bellman_pb2.TargetBatch:
    """A well-formed TargetBatch of random rows (fields overridable with numpy arrays or Tensors)."""
    rng = np.random.default_rng(seed)
    arrays = dict(
        images=rng.integers(0, 256, (rows, image_size, image_size, 3), dtype=np.uint8),
        state_features=rng.random((rows, 2), dtype=np.float32),
        actions=rng.uniform(-1, 1, (rows, 4)).astype(np.float32),
        task_indices=rng.integers(0, num_tasks, rows).astype(np.int64),
        targets=rng.random(rows, dtype=np.float32),
    )
    arrays.update(replace)
    fields = {k: (v if not isinstance(v, np.ndarray) else tensor_to_proto(v)) for k, v in arrays.items()}
    return bellman_pb2.TargetBatch(batch_id=batch_id, worker_id="test", target_model_version=1, lagged_model_version=1, **fields)


@pytest.fixture
def make_trainer(request, aio_loop, tmp_path, backend_kind, make_registry):
    """Factory: make_trainer(registry=None, wait_ready=True, **config_overrides) -> a started TrainerHarness."""

    def make(registry: RegistryHarness | None = None, wait_ready: bool = True, **overrides) -> TrainerHarness:
        registry = registry if registry is not None else make_registry()
        minio = request.getfixturevalue("minio_server") if backend_kind == "s3" else None
        config = trainer_config(tmp_path, backend_kind, minio, f"127.0.0.1:{registry.server.port}", **overrides)
        return TrainerHarness(aio_loop, config, registry, wait_ready)

    with closing_factory(make) as factory:
        yield factory
