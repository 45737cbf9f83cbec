"""log_replay across restarts and outages (real store, SD and registry): a restart resumes after
the last processed episode and refills the buffers without counting anything twice; a store
outage during following loses nothing; relabelling with a new SD version changes the labels."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from replay_harness import make_replay, sim_episodes, upload_all  # noqa: F401 - fixture
from registry_harness import wait_until
from sd_harness import make_sd  # noqa: F401 - fixture
from test_log_replay_service import CAT, make_world, train_sd
from mtopt.core.replay import held_bytes
from mtopt.v1 import log_replay_pb2 as lr_pb


def saved_state(replay) -> dict:
    """The persisted cursor.json, read back through the service's own object store."""
    return json.loads(replay.server.core.cursor_store.load().to_json())


def by_task(episodes) -> dict[str, int]:
    return dict(collections.Counter(e.episode.task for e in episodes))


def test_restart_loses_nothing_and_counts_nothing_twice(make_store, make_registry, make_sd, make_replay):
    world = make_world(make_store, make_registry, make_sd, n=10)
    budget = int(max(held_bytes(e.episode) for e in world.episodes) * 6)
    replay = make_replay(world.store, world.sd, buffer_bytes=budget, classify_batch=2, sd_threshold=world.threshold)
    replay.wait_for(lambda s: s.episodes_processed == 10 and s.caught_up)
    cache = lambda: replay.server.core.cache  # noqa: E731 - a new one after each restart
    kept, outcomes = cache().episode_ids(), {e: cache().outcomes(e) for e in cache().episode_ids()}
    assert 0 < len(kept) < 10  # the budget evicted the oldest: the refill must start in the middle

    replay.restart()  # refill: the same episodes and labels again, none counted again
    stats = replay.wait_for(lambda s: s.caught_up and len(cache()) == len(kept), what="refill")
    assert cache().episode_ids() == kept and {e: cache().outcomes(e) for e in kept} == outcomes
    assert stats.episodes_processed == 10 and replay.metric("mtopt_log_replay_episodes_processed_total", task=world.episodes[0].episode.task) == 0

    more = sim_episodes(12, seed=7)
    upload_all(world.store, more)
    replay.wait_for(lambda s: s.episodes_processed >= 13, what="some new episodes")
    replay.restart()  # in the middle of the new batch of episodes
    stats = replay.wait_for(lambda s: s.episodes_processed >= 22 and s.caught_up, what="the rest")
    assert stats.episodes_processed == 22
    state = saved_state(replay)
    assert state["processed_by_task"] == by_task(world.episodes + more)
    assert state["cursor"] == stats.cursor
    all_ids = [e.episode.episode_id for e in world.episodes + more]
    assert cache().episode_ids() == all_ids[-len(cache()):]


@pytest.mark.parametrize("backend_kind", ["local"])  # the cursor's storage is covered by the restart test
def test_store_and_sd_outages_during_following_lose_nothing(make_store, make_registry, make_sd, make_replay):
    world = make_world(make_store, make_registry, make_sd, n=4)
    replay = make_replay(world.store, world.sd, classify_batch=2, sd_threshold=world.threshold)
    replay.wait_for(lambda s: s.episodes_processed == 4)
    world.store.stop()
    wait_until(lambda: replay.metric("mtopt_log_replay_dependency_errors_total", dependency="episode_store") > 0,
               what="the follower noticing the store outage")
    assert not replay.stats().caught_up
    world.store.start()
    more = sim_episodes(8, seed=11)
    upload_all(world.store, more[:4])
    replay.wait_for(lambda s: s.episodes_processed == 8, what="following again after the store restart")

    world.sd.stop()  # the SD is down while episodes arrive: they wait at the same cursor
    upload_all(world.store, more[4:])
    wait_until(lambda: replay.metric("mtopt_log_replay_dependency_errors_total", dependency="success_detector") > 0,
               what="the follower noticing the SD outage")
    assert replay.stats().episodes_processed == 8
    world.sd.start()
    stats = replay.wait_for(lambda s: s.episodes_processed == 12 and s.caught_up, what="labelling after the SD restart")
    assert saved_state(replay)["processed_by_task"] == by_task(world.episodes + more)
    assert replay.server.core.cache.episode_ids() == [e.episode.episode_id for e in world.episodes + more]
    assert stats.sd_version == world.version


@pytest.mark.parametrize("backend_kind", ["local"])
def test_relabel_with_a_new_sd_version_changes_labels(make_store, make_registry, make_sd, make_replay):
    world = make_world(make_store, make_registry, make_sd, n=12)
    replay = make_replay(world.store, world.sd, sd_threshold=world.threshold, sd_poll_s=0.1)
    replay.wait_for(lambda s: s.episodes_processed == 12)
    cache = replay.server.core.cache
    ids = cache.episode_ids()
    before = {e: cache.outcomes(e) for e in ids}

    # v2 is trained on inverted labels and not promoted: only an explicit Relabel uses it
    v2 = train_sd_inverted(world.sd)
    request = lr_pb.RelabelRequest(sd_version=v2)
    first = replay.stub.Relabel(request, timeout=10)
    assert not first.already_started and first.progress.sd_version == v2
    stats = replay.wait_for(lambda s: s.relabel.sd_version == v2 and s.relabel.state == lr_pb.RELABEL_STATE_DONE)
    assert stats.relabel.episodes_done == stats.relabel.episodes_total == 12 and stats.sd_version == v2
    after = {e: cache.outcomes(e) for e in ids}
    assert after != before and all(after[e].keys() == before[e].keys() for e in ids)
    for e in ids[:4]:
        tasks = sorted(after[e])
        np.testing.assert_array_equal([after[e][t] for t in tasks], world.verdicts([e] * len(tasks), tasks, version=v2))
    again = replay.stub.Relabel(request, timeout=10)
    assert again.already_started and again.progress.state == lr_pb.RELABEL_STATE_DONE
    batch = replay.sample(batch_size=8)[0]
    assert batch.sd_version == v2

    # a new serving version is picked up by the poller and relabels by itself
    v3 = train_sd(world.sd, steps=10)
    stats = replay.wait_for(lambda s: s.sd_version == v3 and s.relabel.sd_version == v3 and s.relabel.state == lr_pb.RELABEL_STATE_DONE,
                            what="automatic relabelling with the new serving version")
    assert replay.metric("mtopt_log_replay_relabelled_episodes_total") == 24


def train_sd_inverted(sd) -> int:
    pool = sim_episodes(80, seed=100, max_steps=4)
    images = [e.episode.final_image for e in pool for _ in CAT.names]
    labels = [not e.ground_truth[t] for e in pool for t in CAT.names]
    sd.add_examples(images, CAT.names * len(pool), labels)
    version = sd.train(tasks=CAT.names, steps=30, promote=False).version
    sd.wait_version(version)
    return version
