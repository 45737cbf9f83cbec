"""success_detector behaviour with real registry and storage (local dir and MinIO): idempotent
AddExamples and TrainVersion, old versions stay usable, warm starts, restarts keep the serving
version and resume interrupted training, health waits for the registry."""

from __future__ import annotations

import time
import types

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from registry_harness import code_of, registry_config, wait_until
from sd_harness import READY, make_sd  # noqa: F401 - fixture
from store_harness import free_port
from mtopt.success_detector.models import MODEL
from mtopt.v1 import success_detector_pb2 as sd_pb

TASK = "lift-red"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def _counts(reply) -> dict:
    return {c.task: (c.positives, c.negatives) for c in reply.counts}


def test_add_examples_is_idempotent_on_example_id(make_registry, make_sd):
    sd = make_sd(make_registry())
    ids = [f"ep-{i}/{TASK}" for i in range(4)]
    first = sd.add_examples(_images(4), [TASK] * 4, [True, True, False, False], ids=ids)
    assert (first.added, first.duplicates) == (4, 0) and _counts(first) == {TASK: (2, 2)}
    # The same ids again, even with another label or task, are no-ops; a repeat inside one request too.
    again = sd.add_examples(_images(5, seed=1), [TASK, TASK, "lift-blue", TASK, TASK], [False] * 5, ids=ids + [ids[0]])
    assert (again.added, again.duplicates) == (0, 5) and _counts(again) == {TASK: (2, 2)}
    mixed = sd.add_examples(_images(2, seed=2), ["lift-blue"] * 2, [True, True], ids=["new-1", "new-1"])
    assert (mixed.added, mixed.duplicates) == (1, 1) and _counts(mixed) == {TASK: (2, 2), "lift-blue": (1, 0)}
    assert len(sd.stored_keys()) == 5
    assert sd.metric("mtopt_success_detector_duplicate_examples_total") == 6
    assert sd.metric("mtopt_success_detector_examples", task=TASK, label="negative") == 2
    # Counts survive a restart (rebuilt from the storage) and ids stay known.
    sd.restart()
    assert sd.metric("mtopt_success_detector_examples", task=TASK, label="positive") == 2
    assert sd.add_examples(_images(1), [TASK], [True], ids=ids[:1]).duplicates == 1


def test_train_version_idempotent_old_versions_warm_start_and_restart(make_registry, make_sd):
    registry = make_registry()
    sd = make_sd(registry, train_steps=20, max_loaded_versions=1)
    sd.add_examples(_images(8), [TASK] * 8, [True, False] * 4)
    v1 = sd.train(request_id="first", tasks=[TASK], promote=True)
    assert v1.version == 1 and v1.state in (sd_pb.SD_VERSION_STATE_PENDING, sd_pb.SD_VERSION_STATE_TRAINING)
    assert sd.train(request_id="first", tasks=["lift-blue"]).version == 1  # a retry returns the first call's version
    assert sd.wait_version(1).serving
    # A second version, warm-started from the first and not promoted: the first keeps serving.
    v2 = sd.train(request_id="second", base_version=1, promote=False)
    assert v2.version == 2 and v2.base_version == 1
    v2 = sd.wait_version(2)
    assert not v2.serving and sd.stub.GetVersion(sd_pb.GetSdVersionRequest(), timeout=10).version == 1
    parent = registry.client.get_version(MODEL, v2.registry_version).parent_version
    assert parent == sd.wait_version(1).registry_version

    images = _images(3, seed=9)
    by_version = {v: np.array([s.probabilities for s in sd.classify(images, sd_version=v).scores]) for v in (1, 2, 1)}
    assert sd.classify(images).sd_version == 1  # default: the serving version
    assert sd.metric("mtopt_success_detector_loaded_versions") == 1  # LRU of one: versions reload on demand

    sd.restart()
    assert sd.metric("mtopt_success_detector_serving_version") == 1
    served = sd.stub.GetVersion(sd_pb.GetSdVersionRequest(version=0), timeout=10)
    assert served.version == 1 and served.serving and served.state == READY
    for v, probs in by_version.items():
        np.testing.assert_allclose([s.probabilities for s in sd.classify(images, sd_version=v).scores], probs, rtol=1e-5)
    assert sd.train(request_id="second").version == 2  # idempotency survives restarts
    assert sd.train(request_id="third", promote=True).version == 3
    sd.wait_version(3)
    assert sd.classify(images).sd_version == 3


def test_restart_resumes_interrupted_training(make_registry, make_sd):
    sd = make_sd(make_registry(), batch_size=4)
    sd.add_examples(_images(4), [TASK] * 4, [True, False] * 2)
    v = sd.train(request_id="long", steps=20_000, promote=True)
    wait_until(lambda: sd.stub.GetVersion(sd_pb.GetSdVersionRequest(version=v.version), timeout=5).state
               == sd_pb.SD_VERSION_STATE_TRAINING, what="training to start")
    sd.stop(grace_s=0.5)  # stops within one batch; the version goes back to PENDING
    record = sd.server.versions.storage.get_version(v.version)
    assert record.state == "PENDING"
    sd.restart()
    # Trained again by the new process, with the steps the request asked for.
    status = sd.stub.GetVersion(sd_pb.GetSdVersionRequest(version=v.version), timeout=5)
    assert status.state in (sd_pb.SD_VERSION_STATE_PENDING, sd_pb.SD_VERSION_STATE_TRAINING)
    sd.stop(grace_s=0.5)
    assert sd.server.versions.storage.get_version(v.version).state == "PENDING"


def test_health_not_serving_until_the_registry_answers(make_registry, make_sd, tmp_path, backend_kind):
    if backend_kind == "s3":
        pytest.skip("the registry dependency is the same on both backends")
    absent = registry_config(tmp_path, "local", None, port=free_port())
    sd = make_sd(types.SimpleNamespace(config=absent), wait_ready=False)
    health = health_pb2_grpc.HealthStub(sd.channel)
    check = lambda: health.Check(health_pb2.HealthCheckRequest(service="mtopt.v1.SuccessDetector"), timeout=5).status  # noqa: E731
    time.sleep(1.0)  # several readiness probes fail meanwhile
    assert not sd.server.service.ready and check() == health_pb2.HealthCheckResponse.NOT_SERVING
    assert code_of(lambda: sd.stub.AddExamples(sd_pb.AddExamplesRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE
    make_registry(port=absent.port)
    sd.wait_ready(30)
    assert check() == health_pb2.HealthCheckResponse.SERVING


def test_versions_are_found_in_the_registry_when_the_records_are_lost(make_registry, make_sd, tmp_path):
    sd = make_sd(make_registry(), train_steps=10)
    version = sd.train_ready_version(_images(4), [TASK] * 4, [True, False] * 2)
    images = _images(2, seed=3)
    before = [list(s.probabilities) for s in sd.classify(images).scores]
    fresh = dict(directory=tmp_path / "sd-empty") if sd.kind == "local" else dict(s3_bucket=f"sd-empty-{version}-{id(sd)}")
    sd.restart(**fresh)  # empty example storage; the registry still holds the published versions
    served = sd.stub.GetVersion(sd_pb.GetSdVersionRequest(), timeout=10)
    assert served.version == version and served.serving and served.state == READY and [t.name for t in served.tasks] == [TASK]
    np.testing.assert_allclose([list(s.probabilities) for s in sd.classify(images).scores], before, rtol=1e-5)
    sd.add_examples(_images(4, seed=4), [TASK] * 4, [True, False] * 2)
    assert sd.train(request_id="after-loss").version == version + 1  # numbers never reused


def test_a_failed_training_is_reported_in_the_version(make_registry, make_sd, backend_kind):
    if backend_kind == "s3":
        pytest.skip("removes an example file of the local backend")
    sd = make_sd(make_registry(), train_steps=5)
    sd.add_examples(_images(4), [TASK] * 4, [True, False] * 2)
    lost = sd.server.versions.storage.objects.root / sd.stored_keys()[0]
    lost.unlink()  # listed in the index, gone from the disk
    v = sd.train(request_id="doomed")
    wait_until(lambda: sd.stub.GetVersion(sd_pb.GetSdVersionRequest(version=v.version), timeout=5).state
               == sd_pb.SD_VERSION_STATE_FAILED, what="the version to fail")
    failed = sd.stub.GetVersion(sd_pb.GetSdVersionRequest(version=v.version), timeout=5)
    assert "missing" in failed.error and failed.registry_version == 0 and failed.finished_time.seconds > 0
    assert sd.metric("mtopt_success_detector_train_runs_total", result="failed") == 1
    assert code_of(lambda: sd.stub.GetVersion(sd_pb.GetSdVersionRequest(version=0), timeout=5)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: sd.stub.TrainVersion(sd_pb.TrainVersionRequest(request_id="x", base_version=v.version), timeout=5)) \
        == grpc.StatusCode.FAILED_PRECONDITION
