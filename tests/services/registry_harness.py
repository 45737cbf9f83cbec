"""model_registry harness for the service tests (and the services that depend on the registry):
a registry in the test loop thread, restartable on the same port, with sync clients. The
make_registry / registry fixtures are in conftest.py."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import grpc
import pytest

from harness_factory import ServiceHarness
from store_harness import CHANNEL_OPTIONS, LoopThread, MinioInfo
from mtopt.model_registry import ModelRegistryConfig, start_model_registry
from mtopt.model_registry.client import RegistryClient
from mtopt.model_registry.objects import LocalDirObjects
from mtopt.v1 import common_pb2, model_registry_pb2_grpc

MODEL = "q_function"


# -- harness -------------------------------------------------------------------------------------
def registry_config(tmp_path: Path, kind: str, minio: MinioInfo | None, **overrides) -> ModelRegistryConfig:
    base = dict(port=0, host="127.0.0.1", metrics_port=0, grace_s=2.0, poll_s=0.1, io_workers=8,
                max_artifact_bytes=1 << 20, max_version_bytes=2 << 20, chunk_bytes=64 * 1024)
    if kind == "local":
        base.update(backend="local", directory=tmp_path / "models", fsync=False)
    else:
        assert minio is not None
        base.update(backend="s3", s3_endpoint=minio.endpoint, s3_bucket=minio.new_bucket_name(),
                    s3_access_key=minio.access_key, s3_secret_key=minio.secret_key)
    base.update(overrides)
    return ModelRegistryConfig(**base)


class RegistryHarness(ServiceHarness):
    """A model_registry in the test loop thread plus sync clients; restartable on the same port."""

    def __init__(self, loop: LoopThread, config: ModelRegistryConfig, objects_factory=None):
        self.loop, self.config, self.kind = loop, config, config.backend
        self._objects_factory = objects_factory
        self.server = None
        self.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}", options=CHANNEL_OPTIONS)
        self.stub = model_registry_pb2_grpc.ModelRegistryStub(self.channel)
        self.client = RegistryClient(self.channel, timeout_s=20)

    def _start_server(self):
        objects = self._objects_factory() if self._objects_factory else None
        return start_model_registry(self.config, objects=objects, readiness_interval_s=0.2)


    def stored_keys(self) -> list[str]:
        """Every object under models/ (to check that a rejected call stored nothing)."""
        objects = self.server.registry.objects
        if isinstance(objects, LocalDirObjects):
            root = objects.root
            return sorted(p.relative_to(root).as_posix() for p in (root / "models").rglob("*") if p.is_file())
        return sorted(o.object_name for o in objects.client.list_objects(objects.bucket, prefix="models/", recursive=True))

    def publish(self, step: int = 1, artifacts: dict | None = None, model: str = MODEL, **kwargs) -> common_pb2.ModelVersion:
        return self.client.publish(model, step, artifacts or weights(step), **kwargs)

    def close(self) -> None:
        self.channel.close()
        self.stop(grace_s=0.5)


def weights(step: int, size: int = 3000) -> dict[str, bytes]:
    """Distinct artifact bytes per step: the ONNX towers and the torch weights."""
    seed = hashlib.sha256(str(step).encode()).digest()
    blob = (seed * (size // 32 + 1))[:size]
    return {"q_tower.onnx": blob, "q_head.onnx": blob[::-1][: size // 3], "model.pt": seed + blob[:100]}


def wait_until(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()
