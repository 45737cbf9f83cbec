"""log_replay harness for the service tests (and the Bellman and end-to-end tests that sample
from it): a log_replay in the test loop thread, restartable on the same port with the same
cursor storage, with a sync stub; plus simulator episodes with ground truth for the store.

Usage in a test module::

    from replay_harness import make_replay, sim_episodes, upload_all  # noqa: F401 - fixture
    from sd_harness import make_sd  # noqa: F401 - fixture

    def test_x(make_store, make_sd, make_replay):
        store = make_store(image_shape=(64, 64, 3))
        sd = make_sd(); sd.train_ready_version(...)
        replay = make_replay(store, sd, impersonation="skill")
        upload_all(store, sim_episodes(20, seed=0))
        replay.wait_for(lambda s: s.episodes_processed == 20)
        batches = replay.sample(batch_size=32, max_batches=2)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from harness_factory import ServiceHarness, closing_factory
from store_harness import CHANNEL_OPTIONS, LoopThread, MinioInfo, StoreHarness
from mtopt.collect import Fleet
from mtopt.episode import Episode
from mtopt.episode_codec import episode_to_proto, tensor_from_proto
from mtopt.log_replay import LogReplayConfig, start_log_replay
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import log_replay_pb2 as lr_pb
from mtopt.v1 import log_replay_pb2_grpc as lr_grpc

SIM_IMAGE_SHAPE = (64, 64, 3)
"""Image shape of simulator episodes: give the store image_shape=SIM_IMAGE_SHAPE."""


def replay_config(tmp_path: Path, kind: str, minio: MinioInfo | None, store_address: str, sd_address: str,
                  **overrides) -> LogReplayConfig:
    base = dict(port=0, host="127.0.0.1", metrics_port=0, grace_s=1.0, store_address=store_address,
                success_detector_address=sd_address, io_workers=2, call_timeout_s=5.0, retry_backoff_s=0.05,
                sd_poll_s=0.2, classify_batch=8, buffer_bytes=64 << 20)
    if kind == "local":
        base.update(backend="local", directory=tmp_path / "log_replay", fsync=False)
    else:
        assert minio is not None
        base.update(backend="s3", s3_endpoint=minio.endpoint, s3_bucket=minio.new_bucket_name(),
                    s3_access_key=minio.access_key, s3_secret_key=minio.secret_key)
    base.update(overrides)
    return LogReplayConfig(**base)


def address_of(harness) -> str:
    """gRPC target of a StoreHarness, an SD harness (``.address``) or a plain address string."""
    if isinstance(harness, str):
        return harness
    if isinstance(harness, StoreHarness):
        return f"127.0.0.1:{harness.store.port}"
    return harness.address


class ReplayHarness(ServiceHarness):
    """A log_replay in the test loop thread plus a sync stub; restartable on the same port."""

    def __init__(self, loop: LoopThread, config: LogReplayConfig, catalogue: TaskCatalogue | None = None, wait_ready: bool = True):
        self.loop, self.config, self.catalogue = loop, config, catalogue
        self.server = None
        self.start(wait_ready)
        # batches of decoded images are large: accept what the server sends (make_channel does too)
        self.channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS + [("grpc.max_receive_message_length", 64 << 20)])
        self.stub = lr_grpc.LogReplayStub(self.channel)

    def _start_server(self):
        return start_log_replay(self.config, catalogue=self.catalogue, readiness_interval_s=0.2)


    def stats(self) -> lr_pb.ReplayStats:
        return self.stub.GetStats(lr_pb.GetStatsRequest(), timeout=10)

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "log_replay stats") -> lr_pb.ReplayStats:
        """Polls GetStats until ``predicate(stats)``; AssertionError with the last stats on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last stats:\n{stats}")
            time.sleep(0.05)

    def sample(self, batch_size: int = 16, max_batches: int = 1, timeout: float = 30, **kwargs) -> list[lr_pb.TransitionBatch]:
        request = lr_pb.SampleRequest(batch_size=batch_size, max_batches=max_batches, **kwargs)
        return list(self.stub.SampleBatches(request, timeout=timeout))

    def close(self) -> None:
        self.channel.close()
        self.stop(grace_s=0.5)


@pytest.fixture
def make_replay(request, aio_loop, tmp_path, backend_kind):
    """Factory: make_replay(store, sd, **config_overrides) -> a started ReplayHarness (stopped after the test).

    ``store`` and ``sd`` are harnesses (or gRPC targets); the cursor uses the test's backend kind
    (give each of several replays its own ``directory`` on the local backend).
    """
    def make(store, sd, catalogue: TaskCatalogue | None = None, wait_ready: bool = True, **overrides) -> ReplayHarness:
        minio = request.getfixturevalue("minio_server") if backend_kind == "s3" else None
        config = replay_config(tmp_path, backend_kind, minio, address_of(store), address_of(sd), **overrides)
        return ReplayHarness(aio_loop, config, catalogue, wait_ready)

    with closing_factory(make) as factory:
        yield factory


# -- data ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SimEpisode:
    episode: Episode
    ground_truth: dict[str, bool]

    def encode(self) -> bytes:
        return episode_to_proto(self.episode, ground_truth_success=self.ground_truth, policy_name="scripted").SerializeToString()


def sim_episodes(n: int, seed: int = 0, tasks: list[str] | None = None, catalogue: TaskCatalogue | None = None,
                 max_steps: int = 3) -> list[SimEpisode]:
    """``n`` scripted simulator episodes (collecting tasks drawn from ``tasks``) with ground truth."""
    catalogue = catalogue or TaskCatalogue.load()
    names = tasks or catalogue.names
    fleet = Fleet(catalogue, num_robots=4, seed=seed)
    out = fleet.collect(num_episodes=n, choose_task=lambda rng: catalogue[names[int(rng.integers(len(names)))]], policy=None,
                        max_steps=max_steps)
    return [SimEpisode(ep, {t.name: bool(gt[j]) for j, t in enumerate(catalogue.tasks)})
            for ep, gt in zip(out.episodes, out.ground_truth)]


def upload_all(store: StoreHarness, episodes: list[SimEpisode]) -> None:
    for e in episodes:
        store.upload(e.encode())


def batch_arrays(batch: lr_pb.TransitionBatch) -> dict[str, np.ndarray]:
    """The tensors of a TransitionBatch as numpy arrays."""
    names = ("images", "state_features", "actions", "next_images", "next_state_features", "task_indices", "rewards", "dones",
             "successes")
    return {n: tensor_from_proto(getattr(batch, n), name=n) for n in names}
