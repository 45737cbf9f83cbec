"""Bellman workers against a real trainer and registry, fed with batches sampled from a real
ReplayBuffer of simulator episodes: target values, Qt1/Qt2 versions, pushing, back-pressure,
two workers side by side, health."""

from __future__ import annotations

import io
import json
import time

import pytest
import torch
from grpc_health.v1 import health_pb2

from bellman_harness import SIM_IMAGE_SIZE, list_source, make_bellman, sim_batches, sim_replay_buffer  # noqa: F401 - fixture
from registry_harness import wait_until
from trainer_harness import make_trainer, target_batch  # noqa: F401 - fixture
from mtopt.bellman.targets import batch_seed, decode_transition_batch, pick_lagged
from mtopt.core.bellman import bellman_targets
from mtopt.core.networks import QNetwork
from mtopt.episode_codec import tensor_from_proto
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import common_pb2, trainer_pb2


@pytest.fixture(params=["local"])
def backend_kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def catalogue() -> TaskCatalogue:
    return TaskCatalogue.load()


@pytest.fixture(scope="module")
def replay(catalogue):
    return sim_replay_buffer(catalogue, episodes=12, seed=0)


def sim_trainer(make_trainer, **overrides):
    base = dict(image_size=SIM_IMAGE_SIZE, buffer_capacity_rows=128, min_buffer_rows=32, max_batch_rows=32, publish_every_steps=5)
    return make_trainer(**(base | overrides))


def train_versions(t, steps: int) -> None:
    """Trains the trainer on random 64 px rows until it has published the version at ``steps``."""
    seq = 0
    while t.trainer.last_published.step < steps:
        ack = t.push(target_batch(f"warm/{seq}", 16, image_size=SIM_IMAGE_SIZE, seed=seq))
        seq += ack.accepted
        time.sleep(0.01 if ack.accepted else ack.retry_after_ms / 1000)


def network(registry, version: int) -> QNetwork:
    v = registry.client.get_version("q_function", version)
    net = QNetwork(**json.loads(v.labels["network"]))
    net.load_state_dict(torch.load(io.BytesIO(registry.client.fetch("q_function", version, names=["target.pt"])["target.pt"]),
                                   weights_only=True))
    return net.eval()


def test_pick_lagged_version():
    vs = [common_pb2.ModelVersion(version=i + 1, step=s) for i, s in enumerate([0, 100, 200, 300])]
    assert pick_lagged(vs, vs[3], 200).version == 2  # newest with step <= 100
    assert pick_lagged(vs, vs[3], 0).version == 4
    assert pick_lagged(vs, vs[1], 200).version == 1  # none old enough: the oldest


def test_targets_equal_bellman_targets_on_the_same_networks(make_trainer, make_bellman, catalogue, replay):
    t = sim_trainer(make_trainer)
    train_versions(t, 10)  # versions 1 (step 0), 2 (step 5), 3 (step 10)
    t.trainer.pause()
    b = make_bellman(t.address, f"127.0.0.1:{t.registry.server.port}", source=list_source([]), target_lag_steps=5)
    status = b.status()
    newest = t.trainer.last_published
    assert status.target_model_version == newest.version
    lagged = t.registry.client.get_version("q_function", status.lagged_model_version)
    assert lagged.step <= newest.step - 5 and status.lagged_model_version < newest.version
    msg = next(m for m in sim_batches(catalogue, 20, buffer=replay)
               if 0 < tensor_from_proto(m.dones).sum() < m.dones.shape[0])  # terminal and non-terminal rows
    tb = b.worker.compute(msg, 3)
    assert tb.batch_id == "worker-a/3"
    assert (tb.target_model_version, tb.lagged_model_version) == (newest.version, lagged.version)
    got = torch.from_numpy(tensor_from_proto(tb.targets).copy())
    batch = decode_transition_batch(msg, SIM_IMAGE_SIZE, catalogue.num_slots)
    q_t1, q_t2 = network(t.registry, newest.version), network(t.registry, lagged.version)
    want = bellman_targets(q_t1, q_t2, torch.from_numpy(batch.next_images), torch.from_numpy(batch.next_states),
                           torch.from_numpy(batch.tasks), torch.from_numpy(batch.rewards), torch.from_numpy(batch.dones),
                           b.worker.algo, torch.Generator().manual_seed(batch_seed("worker-a", 3))).clamp(0, 1)
    torch.testing.assert_close(got, want)
    done = torch.from_numpy(batch.dones) > 0.5
    assert torch.equal(got[done], torch.from_numpy(batch.rewards)[done])  # terminal: exactly r
    live = ~done
    assert torch.all(got[live] > torch.from_numpy(batch.rewards)[live])  # non-terminal: r + gamma * min(Q) > r
    assert torch.all(got[live] <= torch.from_numpy(batch.rewards)[live] + b.worker.algo.gamma + 1e-6)


def test_worker_pushes_targets_to_the_trainer(make_trainer, make_bellman, catalogue, replay):
    t = sim_trainer(make_trainer)
    b = make_bellman(t.address, f"127.0.0.1:{t.registry.server.port}", source=list_source(sim_batches(catalogue, 4, buffer=replay)))
    assert b.health() == health_pb2.HealthCheckResponse.SERVING
    wait_until(lambda: b.worker.batches_pushed == 4, what="4 batches pushed")
    assert t.metric("mtopt_trainer_batches_accepted_total") == 4
    assert t.metric("mtopt_trainer_rows_accepted_total") == 64
    assert b.metric("mtopt_bellman_targets_total", worker="worker-a") == 64
    assert b.metric("mtopt_bellman_batches_pushed_total") == 4
    assert b.metric("mtopt_bellman_target_model_version") == 1
    assert 0 <= b.metric("mtopt_bellman_mean_target") <= 1
    status = b.status()
    assert status.worker_id == "worker-a" and status.targets_computed == 64 and status.batches_pushed == 4
    assert status.HasField("last_push_time") and status.target_model_version == status.lagged_model_version == 1


def test_worker_respects_backpressure(make_trainer, make_bellman, catalogue, replay):
    t = sim_trainer(make_trainer, buffer_capacity_rows=64, min_buffer_rows=32, max_batch_rows=32)
    t.trainer.pause()
    b = make_bellman(t.address, f"127.0.0.1:{t.registry.server.port}", source=list_source(sim_batches(catalogue, 6, buffer=replay)))
    wait_until(lambda: b.worker.batches_rejected >= 2, what="back-pressure")
    assert b.worker.batches_pushed == 4 and len(t.trainer.buffer) == 64  # full, nothing dropped or duplicated
    assert b.metric("mtopt_bellman_batches_rejected_total") >= 2
    assert b.metric("mtopt_bellman_backpressure_seconds_total") > 0
    t.trainer.resume()
    wait_until(lambda: b.worker.batches_pushed == 6, what="all batches pushed after training drained")
    assert t.metric("mtopt_trainer_batches_accepted_total") == 6
    assert t.metric("mtopt_trainer_rows_accepted_total") == 96
    assert t.metric("mtopt_trainer_batches_duplicate_total") == 0


def test_two_workers_side_by_side(make_trainer, make_bellman, catalogue, replay):
    t = sim_trainer(make_trainer)
    registry = f"127.0.0.1:{t.registry.server.port}"
    a = make_bellman(t.address, registry, source=list_source(sim_batches(catalogue, 3, buffer=replay, seed=1)), worker_id="worker-a")
    b = make_bellman(t.address, registry, source=list_source(sim_batches(catalogue, 3, buffer=replay, seed=2)), worker_id="worker-b")
    wait_until(lambda: a.worker.batches_pushed == 3 and b.worker.batches_pushed == 3, what="both workers pushed")
    assert t.metric("mtopt_trainer_batches_accepted_total") == 6
    assert t.metric("mtopt_trainer_batches_duplicate_total") == 0  # distinct batch ids per worker
    assert a.metric("mtopt_bellman_targets_total", worker="worker-a") == 48
    assert b.metric("mtopt_bellman_targets_total", worker="worker-b") == 48


def test_worker_follows_new_versions_between_batches(make_trainer, make_bellman, catalogue, replay):
    t = sim_trainer(make_trainer)
    b = make_bellman(t.address, f"127.0.0.1:{t.registry.server.port}",
                     source=list_source(sim_batches(catalogue, 40, buffer=replay), interval_s=0.2), target_lag_steps=0)
    assert b.status().target_model_version == 1
    v = t.stub.Checkpoint(trainer_pb2.CheckpointRequest(publish=True, reason="test"), timeout=30).published_version.version
    wait_until(lambda: b.status().target_model_version == v, timeout=30, what="Qt1 follows the new version")
    assert b.status().lagged_model_version == v  # lag 0: Qt2 is the newest too


def test_health_waits_for_the_trainer(make_trainer, make_bellman, aio_loop):
    t = sim_trainer(make_trainer)
    t.stop()
    b = make_bellman(t.address, f"127.0.0.1:{t.registry.server.port}", source=list_source([]), wait_ready=False)
    time.sleep(0.6)
    assert b.health() == health_pb2.HealthCheckResponse.NOT_SERVING
    t.start()
    aio_loop.run(b.server.service.wait_until_ready(30), timeout=40)
    assert b.health() == health_pb2.HealthCheckResponse.SERVING
