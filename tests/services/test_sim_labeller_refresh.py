"""The simulated labeller's continuous labelling (refresh mode) against a real episode_store,
success_detector and model_registry: a round labels on-policy final images from ground truth,
trains a second SD version warm-started from the first and promotes it; a round without new
episodes does nothing; a round that fails does not end the loop; `python -m mtopt.sim_labeller`
in refresh mode keeps running after the first version and exits 0 on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest

from registry_harness import wait_until
from replay_harness import SIM_IMAGE_SHAPE, sim_episodes, upload_all
from sd_harness import make_sd  # noqa: F401 - fixture
from store_harness import free_port
from mtopt.serving.config import ConfigError
from mtopt.sim_labeller import LabellerConfig, SimLabeller, load_config
from mtopt.sim_labeller_refresh import ON_POLICY_SOURCE, RefreshLoop, pick_labels
from mtopt.success_detector.storage import example_hash
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import success_detector_pb2 as sd_pb

TASKS = ["lift-any", "lift-red", "place-any"]


@pytest.fixture
def backend_kind() -> str:
    return "local"


@pytest.fixture
def stack(make_store, make_registry, make_sd):
    """A store, a registry and a tiny success detector (few steps, narrow network)."""
    registry = make_registry()
    store = make_store(image_shape=SIM_IMAGE_SHAPE, max_episode_bytes=4 << 20)
    sd = make_sd(registry, channels=8, train_steps=10, batch_size=16)
    return store, sd


def _labeller(store, sd, catalogue, **overrides) -> SimLabeller:
    settings = dict(store_address=f"127.0.0.1:{store.store.port}", success_detector_address=sd.address, examples_per_task=8,
                    min_episodes=16, train_steps=10, refresh_every_s=1.0, refresh_labels_per_task=4, refresh_train_steps=10,
                    rpc_timeout_s=10.0, train_timeout_s=60.0, refresh_train_timeout_s=60.0) | overrides
    return SimLabeller(LabellerConfig(**settings), catalogue)


def _metric(labeller: SimLabeller, name: str, **labels) -> float:
    return labeller.metrics_registry.get_sample_value(name, labels) or 0.0


def test_round_labels_on_policy_images_and_promotes_a_new_version(stack):
    store, sd = stack
    catalogue = TaskCatalogue.load().subset(TASKS)
    names = [t.name for t in catalogue.tasks]
    labeller = _labeller(store, sd, catalogue)
    refresh = RefreshLoop(labeller)
    stop = threading.Event()
    try:
        upload_all(store, sim_episodes(16, seed=0, tasks=TASKS, catalogue=catalogue))
        assert labeller.run(stop) == 1
        refresh.start_following(stop)
        later = sim_episodes(10, seed=1, tasks=TASKS, catalogue=catalogue)
        upload_all(store, later)
        wait_until(lambda: refresh.pending() == 10, timeout=20, what="the new episodes reach the labeller")

        report = refresh.run_round(stop)
        assert report.result == "trained" and report.episodes == 10 and report.sd_version == 1
        assert report.trained_version == report.ready_version == 2
        serving = sd.stub.GetVersion(sd_pb.GetSdVersionRequest(version=0), timeout=10)
        assert serving.version == 2 and serving.base_version == 1 and serving.serving
        # the round's labels (their own source) fill half of every batch of the new version
        record = sd.server.versions.records[2]
        assert (record.focus_source, record.focus_share) == (ON_POLICY_SOURCE, 0.5)
        example = sd_pb.LabelledExample.FromString(sd.server.versions.storage.get_example(
            example_hash(report.labels[0][0]), report.labels[0][1], report.labels[0][2]))
        assert example.source == ON_POLICY_SOURCE
        assert _metric(labeller, "mtopt_sim_labeller_sd_version") == 2

        # every label is the ground truth of an episode of this round, stored under "<episode_id>/<task>"
        truth = {e.episode.episode_id: e.ground_truth for e in later}
        assert len(report.labels) == 4 * len(names)
        for example_id, task, success in report.labels:
            episode_id, _, label_task = example_id.rpartition("/")
            assert label_task == task and success == truth[episode_id][task]
            assert sd.server.book.index[example_hash(example_id)] == (task, success)
        positives = sum(s for _, _, s in report.labels)
        assert report.added == len(report.labels)
        assert _metric(labeller, "mtopt_sim_labeller_refresh_labels_added_total", outcome="positive") == positives
        assert _metric(labeller, "mtopt_sim_labeller_refresh_labels_added_total", outcome="negative") == len(report.labels) - positives
        assert _metric(labeller, "mtopt_sim_labeller_refresh_rounds_total", result="trained") == 1
        # the labels the SD called a success come first per task, at most half of them
        assert report.flagged <= 2 * len(names) and report.flagged_true <= report.flagged
        if report.flagged:
            assert _metric(labeller, "mtopt_sim_labeller_refresh_sd_precision") == pytest.approx(report.precision)

        # nothing new stored: the round does nothing
        again = refresh.run_round(stop)
        assert again.result == "no_new_episodes" and not again.labels
        assert sd.stub.GetVersion(sd_pb.GetSdVersionRequest(version=0), timeout=10).version == 2
        with pytest.raises(grpc.RpcError) as err:
            sd.stub.GetVersion(sd_pb.GetSdVersionRequest(version=3), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert _metric(labeller, "mtopt_sim_labeller_refresh_rounds_total", result="no_new_episodes") == 1
    finally:
        stop.set()
        labeller.close()


def test_a_failing_round_does_not_end_the_loop(stack):
    store, sd = stack
    catalogue = TaskCatalogue.load()
    # more steps than the success detector allows: every TrainVersion is rejected (INVALID_ARGUMENT)
    labeller = _labeller(store, sd, catalogue, refresh_every_s=0.2, refresh_train_steps=200_000)
    refresh = RefreshLoop(labeller)
    stop = threading.Event()
    loop = threading.Thread(target=lambda: labeller.run(stop) and refresh.run(stop), daemon=True)
    try:
        upload_all(store, sim_episodes(16, seed=2, tasks=TASKS))
        loop.start()
        wait_until(lambda: _metric(labeller, "mtopt_sim_labeller_sd_version") == 1, timeout=60, what="SD version 1")
        upload_all(store, sim_episodes(4, seed=3, tasks=TASKS))
        wait_until(lambda: _metric(labeller, "mtopt_sim_labeller_refresh_rounds_total", result="error") >= 2, timeout=30,
                   what="two failed rounds")
        assert loop.is_alive()
        assert _metric(labeller, "mtopt_sim_labeller_refresh_labels_added_total", outcome="negative") > 0
    finally:
        stop.set()
        loop.join(timeout=15)
        labeller.close()
    assert not loop.is_alive()


def test_refresh_mode_process_runs_on_and_stops_on_sigterm(stack, tmp_path):
    store, sd = stack
    upload_all(store, sim_episodes(16, seed=4, tasks=TASKS))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTOPT_")} | {
        "MTOPT_SIM_LABELLER_STORE_ADDRESS": f"127.0.0.1:{store.store.port}",
        "MTOPT_SIM_LABELLER_SUCCESS_DETECTOR_ADDRESS": sd.address, "MTOPT_SIM_LABELLER_MIN_EPISODES": "16",
        "MTOPT_SIM_LABELLER_EXAMPLES_PER_TASK": "8", "MTOPT_SIM_LABELLER_TRAIN_STEPS": "10",
        "MTOPT_SIM_LABELLER_REFRESH_EVERY_S": "0.3", "MTOPT_SIM_LABELLER_METRICS_PORT": str(port),
    }
    with open(tmp_path / "labeller.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mtopt.sim_labeller"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        def rounds() -> float:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                return 0.0
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("mtopt_sim_labeller_refresh_rounds_total{"))

        wait_until(lambda: rounds() >= 2 or proc.poll() is not None, timeout=60, what="two refresh rounds")
        assert proc.poll() is None, (tmp_path / "labeller.log").read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, (tmp_path / "labeller.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_pick_labels_takes_up_to_half_from_the_sd_successes():
    rng = np.random.default_rng(0)
    called = np.zeros(20, bool)
    called[[3, 7, 11]] = True
    chosen, n_flag = pick_labels(called, 4, rng)
    assert n_flag == 2 and len(chosen) == 4 and len(set(chosen.tolist())) == 4
    assert set(chosen[:2].tolist()) <= {3, 7, 11}
    chosen, n_flag = pick_labels(called, 10, rng)
    assert n_flag == 3 and len(chosen) == 10 and set(chosen[:3].tolist()) == {3, 7, 11}
    chosen, n_flag = pick_labels(np.zeros(3, bool), 10, rng)  # fewer images than labels: all of them
    assert n_flag == 0 and sorted(chosen.tolist()) == [0, 1, 2]


@pytest.mark.parametrize("name, value", [
    ("REFRESH_EVERY_S", "-1"), ("REFRESH_LABELS_PER_TASK", "0"), ("REFRESH_TRAIN_STEPS", "-5"),
    ("REFRESH_TRAIN_TIMEOUT_S", "0"), ("REFRESH_MAX_EPISODES", "0"), ("CLASSIFY_BATCH", "2000"), ("SD_THRESHOLD", "1.5"),
    ("REFRESH_EVERY_S", "soon"),
])
def test_config_errors_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=f"MTOPT_SIM_LABELLER_{name}"):
        load_config({f"MTOPT_SIM_LABELLER_{name}": value})


def test_config_defaults_keep_the_one_shot_labeller():
    config = load_config({})
    assert config.refresh_every_s == 0 and config.refresh_labels_per_task == 10
    assert load_config({"MTOPT_SIM_LABELLER_REFRESH_EVERY_S": "60"}).refresh_every_s == 60.0
