"""trainer service: initial publish, health, training and periodic publishing with the full
artifact set, back-pressure, de-duplication and rejected batches (real registry, real gRPC)."""

from __future__ import annotations

import io
import json
import time

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from registry_harness import code_of, wait_until
from trainer_harness import IMAGE_SIZE, TrainerHarness, make_trainer, target_batch, trainer_config  # noqa: F401 - fixture
from mtopt.core.networks import QNetwork
from mtopt.onnx_policy import OnnxCEMPolicy
from mtopt.v1 import common_pb2, trainer_pb2

ARTIFACTS = {"model.pt", "target.pt", "q_tower.onnx", "q_head.onnx"}


@pytest.fixture(params=["local"])
def backend_kind(request) -> str:  # this module's tests are about the trainer, not the storage backend
    return request.param


def health(harness: TrainerHarness) -> int:
    stub = health_pb2_grpc.HealthStub(harness.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service="mtopt.v1.Trainer"), timeout=5).status


def feed_until(t: TrainerHarness, step: int, timeout: float = 60.0, rows: int = 16) -> None:
    """Pushes batches (retrying refused ones) until the trainer has reached ``step``."""
    seq, deadline = 0, time.monotonic() + timeout
    while t.trainer.step < step:
        assert time.monotonic() < deadline, f"trainer stuck at step {t.trainer.step}"
        ack = t.push(target_batch(f"feed/{seq}", rows, seed=seq))
        if ack.accepted:
            seq += 1
        else:
            time.sleep(ack.retry_after_ms / 1000)


def test_publishes_initial_version_once_registry_answers(make_registry, make_trainer, aio_loop, tmp_path):
    registry = make_registry()
    registry.stop()
    t = make_trainer(registry=registry, wait_ready=False)
    time.sleep(0.5)
    assert health(t) == health_pb2.HealthCheckResponse.NOT_SERVING
    registry.start()
    aio_loop.run(t.server.service.wait_until_ready(60), timeout=70)
    assert health(t) == health_pb2.HealthCheckResponse.SERVING
    v = registry.client.get_version("q_function", 0, "latest")
    assert v.version == 1 and v.step == 0 and v.parent_version == 0
    assert {a.name for a in v.artifacts} == ARTIFACTS
    assert json.loads(v.labels["network"]) == {"num_task_slots": t.trainer.catalogue.num_slots, "image_size": IMAGE_SIZE,
                                               "channels": 8, "multi_head": False, "point_readout": True}
    assert [x.name for x in v.tasks] == t.trainer.catalogue.names
    assert t.metric("mtopt_trainer_published_version") == 1
    status = t.stub.GetStatus(trainer_pb2.GetTrainerStatusRequest(), timeout=5)
    assert status.last_published_version == 1 and status.step == 0 and status.buffer_capacity == 64


def test_tower_stem_travels_in_the_network_label(make_trainer):
    """A conv2 trainer names its stem in labels["network"], so Bellman workers build the same network
    from the label (QNetwork(**network)) and the published weights load into it."""
    from mtopt.serving.config import ConfigError
    from mtopt.trainer.config import load_config

    t = make_trainer(tower_stem="conv2")
    v = t.registry.client.get_version("q_function", 0, "latest")
    network = json.loads(v.labels["network"])
    assert network["stem"] == "conv2"
    net = QNetwork(**network)
    assert net.tower.convs[0].stride == (2, 2)
    net.load_state_dict(torch.load(io.BytesIO(t.registry.client.fetch("q_function", v.version)["model.pt"]), weights_only=True))
    with pytest.raises(ConfigError, match="MTOPT_TRAINER_TOWER_STEM"):
        load_config({"MTOPT_TRAINER_TOWER_STEM": "patch8"})


def test_point_readout_travels_in_the_network_label(make_trainer):
    """The label says whether the Q-head has its point readout, and the published weights load
    into the network the label builds either way."""
    from mtopt.trainer.config import load_config

    assert load_config({"MTOPT_TRAINER_POINT_READOUT": "true"}).algo().point_readout
    registry = None
    for on in (True, False):
        model = f"q_point_readout_{str(on).lower()}"
        t = make_trainer(registry=registry, point_readout=on, model=model)
        registry = t.registry
        v = registry.client.get_version(model, 0, "latest")
        network = json.loads(v.labels["network"])
        assert network["point_readout"] is on
        net = QNetwork(**network)
        assert net.q_head.point_readout is on
        net.load_state_dict(torch.load(io.BytesIO(registry.client.fetch(model, v.version)["model.pt"]), weights_only=True))


def test_trains_and_publishes_every_k_steps(make_trainer):
    t = make_trainer()
    feed_until(t, 10)
    wait_until(lambda: t.trainer.last_published.step >= 10, what="publish at step 10")
    versions = t.registry.client.list_versions("q_function")  # newest first
    assert [v.step for v in reversed(versions)][:3] == [0, 5, 10]
    assert [v.parent_version for v in reversed(versions)][:3] == [0, 1, 2]
    v = versions[-3]  # step 10
    assert "losses/td_loss" in v.metrics and np.isfinite(v.metrics["losses/td_loss"])
    blobs = t.registry.client.fetch("q_function", v.version)
    assert set(blobs) == ARTIFACTS
    policy = OnnxCEMPolicy.from_bytes(blobs, samples=16, elites=4)
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    q = policy.q_values(image, np.zeros(2, np.float32), np.zeros((3, 4), np.float32), 0)
    assert q.shape[-1] == 3 and np.all(np.isfinite(q))
    net = QNetwork(**json.loads(v.labels["network"]))
    net.load_state_dict(torch.load(io.BytesIO(blobs["model.pt"]), weights_only=True))
    net.load_state_dict(torch.load(io.BytesIO(blobs["target.pt"]), weights_only=True))
    assert t.metric("mtopt_trainer_steps_total") >= 10
    assert t.metric("mtopt_trainer_loss") > 0
    assert t.metric("mtopt_trainer_starved_seconds_total") > 0  # it waited for the first rows


def test_backpressure_then_accepted_after_training_drains(make_trainer):
    t = make_trainer(min_buffer_rows=40, max_batch_rows=24)
    t.trainer.pause()
    assert t.push(target_batch("w/0", 24, seed=0)).accepted
    assert t.push(target_batch("w/1", 24, seed=1)).accepted
    refused = t.push(target_batch("w/2", 24, seed=2))
    assert not refused.accepted and not refused.duplicate
    assert refused.retry_after_ms > 0 and refused.buffer_size == 48 and refused.buffer_capacity == 64
    assert t.metric("mtopt_trainer_batches_rejected_total", reason="backpressure") == 1
    assert t.metric("mtopt_trainer_buffer_rows") == 48
    t.trainer.resume()
    deadline = time.monotonic() + 30
    while True:
        ack = t.push(target_batch("w/2", 24, seed=2))
        if ack.accepted:
            break
        assert time.monotonic() < deadline, "the refused batch never fit"
        time.sleep(ack.retry_after_ms / 1000)
    assert not ack.duplicate
    assert t.metric("mtopt_trainer_batches_accepted_total") == 3
    assert t.trainer.step > 0


def test_duplicate_batch_id_is_not_stored_twice(make_trainer):
    t = make_trainer()
    t.trainer.pause()
    first = t.push(target_batch("worker-a/7", 8))
    again = t.push(target_batch("worker-a/7", 8))
    assert first.accepted and not first.duplicate
    assert again.accepted and again.duplicate and again.buffer_size == first.buffer_size == 8
    assert t.metric("mtopt_trainer_rows_accepted_total") == 8
    assert t.metric("mtopt_trainer_batches_duplicate_total") == 1


def test_bad_batches_are_rejected_and_store_nothing(make_trainer):
    t = make_trainer()
    t.trainer.pause()
    rng = np.random.default_rng(0)
    bad = {
        "wrong image size": dict(images=rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)),
        "float images": dict(images=np.zeros((8, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)),
        "rows disagree": dict(actions=np.zeros((7, 4), np.float32)),
        "int32 tasks": dict(task_indices=np.zeros(8, np.int32)),
        "task out of range": dict(task_indices=np.full(8, 10_000, np.int64)),
        "target above 1": dict(targets=np.full(8, 1.5, np.float32)),
        "nan target": dict(targets=np.full(8, np.nan, np.float32)),
        "nan action": dict(actions=np.full((8, 4), np.nan, np.float32)),
        "truncated bytes": dict(targets=common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[8], data=b"\0" * 5)),
    }
    for what, fields in bad.items():
        assert code_of(lambda: t.push(target_batch("w/1", 8, **fields))) == grpc.StatusCode.INVALID_ARGUMENT, what
    assert code_of(lambda: t.push(target_batch("", 8))) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: t.push(target_batch("w/2", 33))) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert t.metric("mtopt_trainer_batches_rejected_total", reason="invalid") == len(bad) + 1
    assert t.metric("mtopt_trainer_batches_rejected_total", reason="too_large") == 1
    assert len(t.trainer.buffer) == 0
    ack = t.push(target_batch("w/1", 8))  # the id of a rejected batch was not remembered
    assert ack.accepted and not ack.duplicate


def test_config_rejects_a_buffer_that_could_deadlock(tmp_path):
    from mtopt.serving import ConfigError

    with pytest.raises(ConfigError, match="MTOPT_TRAINER_MAX_BATCH_ROWS"):
        trainer_config(tmp_path, "local", None, "localhost:1", buffer_capacity_rows=64, min_buffer_rows=48, max_batch_rows=32)
