"""log_replay against a real episode_store, success_detector (trained on simulator final images
with ground-truth labels) and model_registry, all on localhost: impersonation, labels from the
SD, re-balanced batches, the byte budget, bad requests and health."""

from __future__ import annotations

import dataclasses
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from replay_harness import SIM_IMAGE_SHAPE, batch_arrays, make_replay, sim_episodes, upload_all  # noqa: F401 - fixture
from registry_harness import code_of, wait_until
from sd_harness import make_sd  # noqa: F401 - fixture
from mtopt.core.replay import held_bytes, impersonate
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import log_replay_pb2 as lr_pb

CAT = TaskCatalogue.load()
SD_SETTINGS = dict(channels=8, train_steps=30, batch_size=32)


@pytest.fixture
def backend_kind() -> str:
    return "local"


@dataclasses.dataclass
class World:
    store: object
    sd: object
    episodes: list
    version: int
    threshold: float

    def final_image(self, episode_id: str) -> np.ndarray:
        return next(e.episode.final_image for e in self.episodes if e.episode.episode_id == episode_id)

    def verdicts(self, episode_ids, tasks, version=None) -> np.ndarray:
        """What the SD says (p >= threshold) for each (episode, task) pair, asked directly."""
        out = []
        for eid, task in zip(episode_ids, tasks):
            reply = self.sd.classify([self.final_image(eid)], [task], sd_version=version or self.version)
            out.append(reply.scores[0].probabilities[0] >= self.threshold)
        return np.array(out)


def train_sd(sd, steps: int = 30, all_positive: bool = False) -> int:
    """A READY SD version trained on simulator final images with ground-truth labels for every task
    (a pool of 80 scripted episodes, in which every task succeeds at least once)."""
    pool = sim_episodes(80, seed=100, max_steps=4)
    images = [e.episode.final_image for e in pool for _ in CAT.names]
    labels = [True if all_positive else e.ground_truth[t] for e in pool for t in CAT.names]
    return sd.train_ready_version(images, CAT.names * len(pool), labels, steps=steps)


def make_world(make_store, make_registry, make_sd, n=24, seed=0, tasks=None) -> World:
    """A store holding ``n`` simulator episodes and an SD version trained on their final images."""
    store = make_store(image_shape=SIM_IMAGE_SHAPE, max_episode_bytes=4 << 20)
    sd = make_sd(make_registry(), **SD_SETTINGS)
    episodes = sim_episodes(n, seed=seed, tasks=tasks)
    version = train_sd(sd)
    probs = np.array([s.probabilities for s in sd.classify([e.episode.final_image for e in episodes], CAT.names).scores])
    threshold = float(np.median(probs))  # a threshold that splits the SD's scores: both outcomes occur
    upload_all(store, episodes)
    return World(store, sd, episodes, version, threshold)


def test_impersonation_modes_map_episodes_to_tasks(make_store, make_registry, make_sd, make_replay, tmp_path):
    world = make_world(make_store, make_registry, make_sd, n=12, tasks=["lift-red", "place-on-plate"])
    for mode in ("orig", "skill", "all"):
        replay = make_replay(world.store, world.sd, impersonation=mode, directory=tmp_path / mode, sd_threshold=world.threshold)
        stats = replay.wait_for(lambda s: s.episodes_processed == len(world.episodes) and s.caught_up, what=f"{mode} backfill")
        refs = {t.task: t.success_episodes + t.failure_episodes for t in stats.tasks}
        expected = {name: 0 for name in CAT.names}
        for e in world.episodes:
            for task in impersonate(CAT[e.episode.task], CAT, mode):
                expected[task.name] += 1
        assert refs == expected, mode
        assert stats.impersonation == {"orig": lr_pb.IMPERSONATION_MODE_ORIG, "skill": lr_pb.IMPERSONATION_MODE_SKILL,
                                       "all": lr_pb.IMPERSONATION_MODE_ALL}[mode]
        replay.close()


def test_labels_come_from_the_sd_and_batches_are_rebalanced(make_store, make_registry, make_sd, make_replay):
    world = make_world(make_store, make_registry, make_sd, n=24, tasks=["lift-any", "lift-red", "lift-blue", "place-any"])
    replay = make_replay(world.store, world.sd, impersonation="skill", sd_threshold=world.threshold)
    stats = replay.wait_for(lambda s: s.episodes_processed == len(world.episodes))
    assert stats.sd_version == world.version
    by_task = {t.task: t for t in stats.tasks}
    assert all(by_task[t].success_episodes + by_task[t].failure_episodes > 0 for t in ("lift-green", "place-in-bowl"))
    assert replay.metric("mtopt_log_replay_labelled_episodes_total", task="lift-red") > 0
    gt = sum(e.ground_truth[e.episode.task] for e in world.episodes if e.episode.task == "lift-any")
    assert replay.metric("mtopt_log_replay_ground_truth_successes_total", task="lift-any") == gt

    # Default request: every task with data gets an equal share.
    batches = replay.sample(batch_size=60, max_batches=3)
    assert [b.sequence for b in batches] == [0, 1, 2]
    with_data = [t.task for t in stats.tasks if t.success_episodes + t.failure_episodes]
    for b in batches:
        a = batch_arrays(b)
        counts = np.bincount(a["task_indices"], minlength=CAT.num_slots)[[CAT[t].index for t in with_data]]
        assert counts.max() - counts.min() <= 1 and counts.sum() == 60
        assert a["images"].dtype == np.uint8 and a["images"].shape == (60, *SIM_IMAGE_SHAPE)
        done = a["dones"] > 0
        np.testing.assert_array_equal(a["rewards"], np.where(done, a["successes"], 0).astype(np.float32))
        assert not a["next_images"][done].any() and not a["next_state_features"][done].any()
        assert b.sd_version == world.version and len(b.episode_ids) == 60 and len(b.tasks) == len(CAT)
        # every row's label is the SD's verdict for that episode and task
        rows = np.arange(0, 60, 7)
        names = [CAT.by_index(int(k)).name for k in a["task_indices"][rows]]
        np.testing.assert_array_equal(a["successes"][rows], world.verdicts([b.episode_ids[i] for i in rows], names))

    # Explicit tasks with both outcomes: the success fraction holds inside each task, however skewed the data.
    mixed = [t.task for t in stats.tasks if t.success_episodes and t.failure_episodes][:2]
    assert mixed, f"the median threshold left no task with both outcomes: {stats.tasks}"
    for fraction in (0.25, 0.75):
        a = batch_arrays(replay.sample(batch_size=400, tasks=mixed, success_fraction=fraction)[0])
        for t in mixed:
            rows = a["task_indices"] == CAT[t].index
            assert rows.sum() == 400 // len(mixed)
            assert abs(a["successes"][rows].mean() - fraction) < 0.1
    assert replay.stats().batches_served == 5
    assert replay.metric("mtopt_log_replay_batches_served_total") == 5


def test_buffer_stays_within_its_byte_budget(make_store, make_registry, make_sd, make_replay):
    world = make_world(make_store, make_registry, make_sd, n=20)
    one = max(held_bytes(e.episode) for e in world.episodes)
    budget = int(one * 4.5)
    replay = make_replay(world.store, world.sd, buffer_bytes=budget, classify_batch=3, sd_threshold=world.threshold)
    stats = replay.wait_for(lambda s: s.episodes_processed == 20)
    assert 0 < stats.bytes_total <= budget
    assert replay.metric("mtopt_log_replay_buffer_bytes") <= budget
    kept, total = [], 0  # the newest episodes that fit, oldest first
    for e in reversed(world.episodes):
        if total + held_bytes(e.episode) > budget:
            break
        kept.insert(0, e.episode.episode_id)
        total += held_bytes(e.episode)
    assert replay.server.core.cache.episode_ids() == kept and stats.bytes_total == total
    assert set(replay.sample(batch_size=32)[0].episode_ids) <= set(kept)


def test_bad_sample_requests_are_invalid_argument(make_store, make_registry, make_sd, make_replay):
    world = make_world(make_store, make_registry, make_sd, n=6)
    replay = make_replay(world.store, world.sd, max_batch_size=1000)
    replay.wait_for(lambda s: s.episodes_processed == 6)
    bad = [
        (dict(batch_size=0), "batch_size"), (dict(batch_size=-3), "batch_size"), (dict(batch_size=1001), "batch_size"),
        (dict(batch_size=8, tasks=["lift-red", "fly"]), "unknown_task"),
        (dict(batch_size=8, success_fraction=1.5), "success_fraction"),
        (dict(batch_size=8, success_fraction=float("nan")), "success_fraction"),
        (dict(batch_size=8, max_batches=-1), "max_batches"),
    ]
    for kwargs, reason in bad:
        before = replay.metric("mtopt_log_replay_rejected_total", reason=reason)
        assert code_of(lambda: replay.sample(**kwargs)) == grpc.StatusCode.INVALID_ARGUMENT, kwargs
        assert replay.metric("mtopt_log_replay_rejected_total", reason=reason) == before + 1
    assert replay.stats().batches_served == 0
    relabel = lambda **kw: replay.stub.Relabel(lr_pb.RelabelRequest(**kw), timeout=10)  # noqa: E731
    assert code_of(lambda: relabel(sd_version=99)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: relabel(tasks=["fly"])) == grpc.StatusCode.INVALID_ARGUMENT
    assert replay.sample(batch_size=8, max_batches=2)[1].sequence == 1  # the service still serves


def test_health_not_serving_until_dependencies_answer(make_store, make_registry, make_sd, make_replay):
    store = make_store(image_shape=SIM_IMAGE_SHAPE)
    sd = make_sd(make_registry(), **SD_SETTINGS)  # no READY version yet
    replay = make_replay(store, sd, wait_ready=False)
    health = health_pb2_grpc.HealthStub(replay.channel)
    status = lambda: health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status  # noqa: E731
    wait_until(lambda: replay.server.runner is not None, what="start")
    for _ in range(5):
        assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
    episodes = sim_episodes(6, seed=3)
    sd.train_ready_version([e.episode.final_image for e in episodes], ["lift-any"] * 6, [True, False] * 3, steps=5)
    wait_until(lambda: status() == health_pb2.HealthCheckResponse.SERVING, what="SERVING once the SD has a READY version")
    store.stop()
    wait_until(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING, what="NOT_SERVING while the store is down")
    store.start()
    wait_until(lambda: status() == health_pb2.HealthCheckResponse.SERVING, what="SERVING again")


def test_batches_are_produced_only_as_the_client_reads(make_store, make_registry, make_sd, make_replay):
    world = make_world(make_store, make_registry, make_sd, n=6)
    replay = make_replay(world.store, world.sd)
    replay.wait_for(lambda s: s.episodes_processed == 6)
    stream = replay.stub.SampleBatches(lr_pb.SampleRequest(batch_size=128, max_batches=0), timeout=30)
    assert next(stream).sequence == 0
    wait_until(lambda: replay.metric("mtopt_log_replay_sample_streams") == 1, what="the open stream")
    time.sleep(1.0)  # the client reads nothing: the server stops once gRPC's windows are full
    served = replay.stats().batches_served
    assert served < 20, served
    assert [next(stream).sequence for _ in range(3)] == [1, 2, 3]
    stream.cancel()
    wait_until(lambda: replay.metric("mtopt_log_replay_sample_streams") == 0, what="the stream to close")
