"""success_detector end to end with a real model registry (local dir and MinIO): examples from
the simulator's ground truth -> TrainVersion -> READY -> Classify separates successes from
failures; restarts keep the serving version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from registry_harness import wait_until
from sd_harness import READY, make_sd, sim_final_images  # noqa: F401 - fixture
from store_harness import REPO, free_port
from mtopt.episode_codec import encode_image
from mtopt.success_detector.models import MODEL, SERVING_ALIAS
from mtopt.v1 import success_detector_pb2 as sd_pb
from mtopt.v1 import success_detector_pb2_grpc as sd_grpc

TASK = "lift-any"
IDS = "sim-example"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sim_data():
    images, labels = sim_final_images(300, TASK, seed=1)
    assert 40 < labels.sum() < 260, "the scripted policy should give both outcomes"
    return images, labels


def test_train_ready_classify_separates_successes(make_registry, make_sd, sim_data):
    registry = make_registry()
    sd = make_sd(registry)
    images, labels = sim_data
    train, test = slice(0, 220), slice(220, 300)
    # fixed example ids: the held-out split hashes them, so random ids made the trained SD (and
    # this test's accuracy) vary from run to run
    ids = [f"{IDS}-{i}" for i in range(220)]
    version = sd.train_ready_version(images[train], [TASK] * 220, labels[train], ids=ids)
    assert version == 1

    v = sd.stub.GetVersion(sd_pb.GetSdVersionRequest(version=0), timeout=10)
    assert v.version == version and v.state == READY and v.serving
    assert [t.name for t in v.tasks] == [TASK] and v.num_examples == 220
    assert "eval/accuracy" in v.metrics and f"eval/accuracy/{TASK}" in v.metrics and v.registry_version >= 1

    reply = sd.classify(images[test], [TASK])
    assert reply.sd_version == version and list(reply.tasks) == [TASK]
    probs = np.array([s.probabilities[0] for s in reply.scores])
    y = labels[test]
    assert probs[y].mean() > probs[~y].mean() + 0.25, (probs[y].mean(), probs[~y].mean())
    assert ((probs > 0.5) == y).mean() > 0.75

    # Empty task list: every task the version knows; the same scores.
    all_tasks = sd.classify(images[test][:3])
    assert list(all_tasks.tasks) == [TASK]
    np.testing.assert_allclose([s.probabilities[0] for s in all_tasks.scores], probs[:3], rtol=1e-5)

    # Published to the registry as model success_detector, with the serving alias.
    mv = registry.client.get_version(MODEL, alias=SERVING_ALIAS)
    assert mv.version == v.registry_version and mv.labels["sd_version"] == str(version)
    assert {a.name for a in mv.artifacts} == {"sd.pt"} and "network" in mv.labels
    assert sd.metric("mtopt_success_detector_serving_version") == version
    assert sd.metric("mtopt_success_detector_train_runs_total", result="ready") == 1
    assert sd.metric("mtopt_success_detector_examples", task=TASK, label="positive") == labels[train].sum()
    assert sd.metric("mtopt_success_detector_images_classified_total") == 83


def test_focus_source_decides_between_contradicting_labels(make_registry, make_sd):
    # The same kind of image labelled a success by one source and a failure by another: the
    # version follows whichever source fills 90% of its batches (TrainVersion focus_source/share).
    sd = make_sd(make_registry(), train_steps=200)
    rng = np.random.default_rng(3)
    red = lambda n: np.clip(np.full((n, 64, 64, 3), (200, 50, 50)) + rng.integers(-20, 21, (n, 64, 64, 3)), 0, 255).astype(np.uint8)  # noqa: E731
    sd.add_examples(red(40), [TASK] * 40, [True] * 40, ids=[f"boot-{i}" for i in range(40)], source="sim_ground_truth")
    sd.add_examples(red(40), [TASK] * 40, [False] * 40, ids=[f"policy-{i}" for i in range(40)], source="sim_on_policy")
    probe = red(8)
    for source, expect_success in (("sim_on_policy", False), ("sim_ground_truth", True)):
        version = sd.train(tasks=[TASK], focus_source=source, focus_share=0.9).version
        v = sd.wait_version(version)
        assert 0 < v.metrics["train/num_focus_examples"] < 40  # the rest of the 40 are held out
        probs = np.array([s.probabilities[0] for s in sd.classify(probe, [TASK], sd_version=version).scores])
        assert ((probs > 0.5) == expect_success).all(), (source, probs)


def test_network_label_round_trips_the_tower_stem():
    import json

    from mtopt.success_detector.models import build_detector, network_kwargs, parse_network, weights_bytes

    assert network_kwargs(13, 64, 8) == {"num_task_slots": 13, "image_size": 64, "channels": 8}  # labels as before
    network = network_kwargs(13, 64, 8, "conv2")
    assert parse_network({"network": json.dumps(network)}) == network
    sd = build_detector(network, None, "cpu")
    assert sd.net.tower.convs[0].stride == (2, 2)
    loaded = build_detector(parse_network({"network": json.dumps(network)}), weights_bytes(sd), "cpu")
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded.predict(images, [0, 5]), sd.predict(images, [0, 5]), rtol=1e-5)


def test_sigterm_stops_the_entry_point_gracefully(make_registry, tmp_path, backend_kind):
    if backend_kind == "s3":
        pytest.skip("the entry point is the same on both backends")
    registry = make_registry()
    port, directory = free_port(), tmp_path / "sd-process"
    env = dict(os.environ, MTOPT_SUCCESS_DETECTOR_PORT=str(port), MTOPT_SUCCESS_DETECTOR_METRICS_PORT=str(free_port()),
               MTOPT_SUCCESS_DETECTOR_HOST="127.0.0.1", MTOPT_SUCCESS_DETECTOR_DIRECTORY=str(directory),
               MTOPT_SUCCESS_DETECTOR_REGISTRY_ADDRESS=f"127.0.0.1:{registry.config.port}", MTOPT_SUCCESS_DETECTOR_GRACE_S="2",
               MTOPT_SUCCESS_DETECTOR_REFRESH_S="0.2")
    proc = subprocess.Popen([sys.executable, "-m", "mtopt.success_detector"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def serving():
                try:
                    return health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    assert proc.poll() is None, proc.stdout.read().decode()
                    return False

            wait_until(serving, timeout=60, what="the success_detector process to serve")
            image = encode_image(np.zeros((64, 64, 3), np.uint8))
            request = sd_pb.AddExamplesRequest(examples=[sd_pb.LabelledExample(example_id="e1", image=image, task=TASK, success=True)])
            assert sd_grpc.SuccessDetectorStub(channel).AddExamples(request, timeout=10).added == 1
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode()
        assert b"received SIGTERM" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(list((directory / "success_detector" / "examples" / TASK / "positive").iterdir())) == 1
