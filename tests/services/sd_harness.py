"""success_detector harness for the service tests (and the services that depend on it, e.g.
log_replay): a success detector in the test loop thread, on the backend of the registry it
publishes to, with a sync stub and helpers; plus real labelled final images from the simulator.

Usage in a test module::

    from registry_harness import *  # noqa (nothing needed: make_registry is in conftest.py)
    from sd_harness import make_sd  # noqa: F401 - fixture

    def test_x(make_registry, make_sd):
        sd = make_sd(make_registry())                  # or make_sd(registry, train_steps=50, ...)
        images, labels = sim_final_images(120, "lift-any")
        version = sd.train_ready_version(images, ["lift-any"] * len(images), labels)
        reply = sd.classify(images[:4], ["lift-any"])
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Sequence

import grpc
import numpy as np
import pytest

from harness_factory import ServiceHarness, closing_factory
from store_harness import CHANNEL_OPTIONS, LoopThread
from mtopt.episode_codec import encode_image
from mtopt.model_registry.objects import LocalDirObjects
from mtopt.success_detector import SuccessDetectorConfig, start_success_detector
from mtopt.v1 import success_detector_pb2 as sd_pb
from mtopt.v1 import success_detector_pb2_grpc as sd_grpc

READY = sd_pb.SD_VERSION_STATE_READY
FAILED = sd_pb.SD_VERSION_STATE_FAILED


def sd_config(tmp_path: Path, registry, **overrides) -> SuccessDetectorConfig:
    """Test settings: the registry harness's address and backend (same bucket on s3, own prefix),
    a small network and few train steps."""
    base = dict(port=0, host="127.0.0.1", metrics_port=0, grace_s=2.0, registry_address=f"127.0.0.1:{registry.config.port}",
                registry_timeout_s=10.0, image_size=64, channels=16, train_steps=300, batch_size=32, learning_rate=2e-3,
                io_workers=4, refresh_s=0.2)
    rc = registry.config
    if rc.backend == "local":
        base.update(backend="local", directory=tmp_path / f"sd-{uuid.uuid4().hex[:6]}", fsync=False)
    else:
        base.update(backend="s3", s3_endpoint=rc.s3_endpoint, s3_bucket=rc.s3_bucket, s3_access_key=rc.s3_access_key,
                    s3_secret_key=rc.s3_secret_key)
    base.update(overrides)
    return SuccessDetectorConfig(**base)


class SdHarness(ServiceHarness):
    """A success_detector in the test loop thread plus a sync stub; restartable on the same port."""

    def __init__(self, loop: LoopThread, config: SuccessDetectorConfig, wait_ready: bool = True):
        self.loop, self.config, self.kind = loop, config, config.backend
        self.server = None
        self.start(wait_ready)
        self.channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self.stub = sd_grpc.SuccessDetectorStub(self.channel)

    ready_timeout_s = 30.0

    def _start_server(self):
        return start_success_detector(self.config, readiness_interval_s=0.2)


    def stored_keys(self) -> list[str]:
        """Every object under success_detector/ (to check that a rejected call stored nothing)."""
        objects = self.server.versions.storage.objects
        if isinstance(objects, LocalDirObjects):
            root = objects.root
            return sorted(p.relative_to(root).as_posix() for p in (root / "success_detector").rglob("*") if p.is_file())
        return sorted(o.object_name for o in objects.client.list_objects(objects.bucket, prefix="success_detector/", recursive=True))

    # -- calls -----------------------------------------------------------------------------------
    def add_examples(self, images, tasks: Sequence[str], labels: Sequence[bool], ids: Sequence[str] | None = None,
                     source: str = "sim_ground_truth") -> sd_pb.AddExamplesResponse:
        ids = ids or [uuid.uuid4().hex for _ in tasks]
        examples = [sd_pb.LabelledExample(example_id=i, image=encode_image(img), task=t, success=bool(y), source=source)
                    for i, img, t, y in zip(ids, images, tasks, labels)]
        reply = sd_pb.AddExamplesResponse()
        for start in range(0, len(examples), 256):
            part = self.stub.AddExamples(sd_pb.AddExamplesRequest(examples=examples[start:start + 256]), timeout=30)
            reply = sd_pb.AddExamplesResponse(added=reply.added + part.added, duplicates=reply.duplicates + part.duplicates,
                                              counts=part.counts)
        return reply

    def train(self, request_id: str | None = None, tasks: Sequence[str] = (), steps: int = 0, promote: bool = True,
              base_version: int = 0, focus_source: str = "", focus_share: float = 0.0) -> sd_pb.SdVersion:
        request = sd_pb.TrainVersionRequest(request_id=request_id or uuid.uuid4().hex, tasks=list(tasks), train_steps=steps,
                                            promote_when_ready=promote, base_version=base_version,
                                            focus_source=focus_source, focus_share=focus_share)
        return self.stub.TrainVersion(request, timeout=30).version

    def wait_version(self, version: int, timeout: float = 120) -> sd_pb.SdVersion:
        """Polls GetVersion until READY (returned) or FAILED (AssertionError with its error)."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.stub.GetVersion(sd_pb.GetSdVersionRequest(version=version), timeout=10)
            if v.state == READY:
                return v
            if v.state == FAILED:
                raise AssertionError(f"SD version {version} failed: {v.error}")
            if time.monotonic() > deadline:
                raise AssertionError(f"SD version {version} not READY after {timeout}s (state {v.state})")
            time.sleep(0.05)

    def train_ready_version(self, images, tasks: Sequence[str], labels: Sequence[bool], steps: int = 0,
                            promote: bool = True, timeout: float = 120, ids: Sequence[str] | None = None) -> int:
        """Adds the examples, trains a version on their tasks, waits for READY; returns the version."""
        self.add_examples(images, tasks, labels, ids)
        version = self.train(tasks=sorted(set(tasks)), steps=steps, promote=promote).version
        self.wait_version(version, timeout)
        return version

    def classify(self, images, tasks: Sequence[str] = (), sd_version: int = 0) -> sd_pb.ClassifyResponse:
        request = sd_pb.ClassifyRequest(images=[encode_image(i) for i in images], tasks=list(tasks), sd_version=sd_version)
        return self.stub.Classify(request, timeout=30)

    def close(self) -> None:
        self.channel.close()
        self.stop(grace_s=0.5)


def sim_final_images(n: int, task: str = "lift-any", seed: int = 1, num_robots: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(final images (n, 64, 64, 3) uint8, ground-truth success for ``task``) of scripted episodes
    of ``task`` in the built-in simulator."""
    from mtopt.collect import Fleet
    from mtopt.tasks import TaskCatalogue

    catalogue = TaskCatalogue.load()
    out = Fleet(catalogue, num_robots, seed=seed).collect(n, lambda r: catalogue[task], None, 4)
    images = np.stack([e.final_image for e in out.episodes])
    return images, out.ground_truth[:, catalogue.names.index(task)].copy()


@pytest.fixture
def make_sd(aio_loop, tmp_path):
    """Factory: make_sd(registry_harness, wait_ready=True, **config_overrides) -> a started
    SdHarness (stopped after the test)."""

    def make(registry, wait_ready: bool = True, **overrides) -> SdHarness:
        return SdHarness(aio_loop, sd_config(tmp_path, registry, **overrides), wait_ready)

    with closing_factory(make) as factory:
        yield factory
