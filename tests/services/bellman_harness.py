"""bellman harness for the service tests: Bellman workers in the test loop thread, fed either by
the real log_replay service or by a stream of TransitionBatches sampled from a real
`mtopt.core.replay.ReplayBuffer` filled with simulator episodes (ground-truth labels), encoded
with log_replay's own wire encoder.

Fixture ``make_bellman(trainer, registry, source=None, wait_ready=True, **config_overrides)``;
import it with ``from bellman_harness import make_bellman  # noqa: F401 - fixture``.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness_factory import closing_factory
from store_harness import CHANNEL_OPTIONS, LoopThread
from mtopt.bellman import BellmanConfig, start_bellman
from mtopt.collect import Fleet
from mtopt.core.replay import ReplayBuffer, impersonate
from mtopt.log_replay.servicer import batch_to_proto
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import bellman_pb2, bellman_pb2_grpc, common_pb2, log_replay_pb2

SIM_IMAGE_SIZE = 64


def sim_replay_buffer(catalogue: TaskCatalogue, episodes: int = 12, seed: int = 0) -> ReplayBuffer:
    """A ReplayBuffer of scripted simulator episodes, labelled (f_skill) with ground truth."""
    fleet = Fleet(catalogue, num_robots=4, seed=seed)
    choose = lambda r: catalogue.tasks[r.integers(len(catalogue))]  # noqa: E731
    out = fleet.collect(episodes, choose, None, max_steps=4)
    buffer = ReplayBuffer(catalogue)
    column = {t.name: j for j, t in enumerate(catalogue.tasks)}
    for i, ep in enumerate(out.episodes):
        tasks = impersonate(catalogue[ep.task], catalogue, "skill")
        buffer.add(ep, {t.name: bool(out.ground_truth[i, column[t.name]]) for t in tasks})
    return buffer


def sim_batches(catalogue: TaskCatalogue, n: int, batch_size: int = 16, seed: int = 0, buffer: ReplayBuffer | None = None
                ) -> list[log_replay_pb2.TransitionBatch]:
    buffer = buffer or sim_replay_buffer(catalogue, seed=seed)
    rng = np.random.default_rng(seed)
    tasks = [common_pb2.Task(name=t.name, skill=t.skill, index=t.index) for t in catalogue]
    return [batch_to_proto(buffer.sample(batch_size, rng), tasks, sd_version=1, sequence=i) for i in range(n)]


def list_source(batches, interval_s: float = 0.0):
    """A BatchSource that streams ``batches`` once (each ``interval_s`` apart), then stays open
    with nothing more to send (like a replay stream waiting for data)."""

    def open_stream():
        async def gen():
            for b in batches:
                if interval_s:
                    await asyncio.sleep(interval_s)
                yield b
            await asyncio.Event().wait()

        return gen()

    return open_stream


def bellman_config(trainer_address: str, registry_address: str, **overrides) -> BellmanConfig:
    base = dict(port=0, host="127.0.0.1", metrics_port=0, trainer_address=trainer_address, registry_address=registry_address,
                log_replay_address="", worker_id="worker-a", batch_size=16, cem_samples=16, cem_elites=4, target_lag_steps=5,
                registry_poll_s=0.2, call_timeout_s=10, max_backoff_s=0.5, device="cpu", grace_s=2.0)
    base.update(overrides)
    return BellmanConfig(**base)


class BellmanHarness:
    def __init__(self, loop: LoopThread, config: BellmanConfig, source=None, wait_ready: bool = True):
        self.loop, self.config = loop, config
        self.server = loop.run(start_bellman(config, source=source, readiness_interval_s=0.2))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}", options=CHANNEL_OPTIONS)
        self.stub = bellman_pb2_grpc.BellmanStub(self.channel)
        if wait_ready:
            loop.run(self.server.service.wait_until_ready(60), timeout=70)

    @property
    def worker(self):
        return self.server.worker

    def status(self) -> bellman_pb2.BellmanStatus:
        return self.stub.GetStatus(bellman_pb2.GetBellmanStatusRequest(), timeout=5)

    def health(self) -> int:
        return health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service="mtopt.v1.Bellman"), timeout=5).status

    def metric(self, name: str, **labels) -> float:
        return self.server.metrics.value(name, labels)

    def close(self) -> None:
        self.channel.close()
        self.loop.run(self.server.stop(0.5))


@pytest.fixture
def make_bellman(aio_loop):
    """Factory: make_bellman(trainer_address, registry_address, source=None, wait_ready=True, **overrides)."""

    def make(trainer_address: str, registry_address: str, source=None, wait_ready: bool = True, **overrides) -> BellmanHarness:
        return BellmanHarness(aio_loop, bellman_config(trainer_address, registry_address, **overrides), source, wait_ready)

    with closing_factory(make) as factory:
        yield factory
