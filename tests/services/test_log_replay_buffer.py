"""Unit tests of log_replay's buffer bookkeeping and persisted state (no servers)."""

from __future__ import annotations

import numpy as np
import pytest

from store_harness import make_episode
from mtopt.core.replay import HELD_EPISODE_OVERHEAD_BYTES, held_bytes
from mtopt.log_replay.buffer import ReplayCache
from mtopt.log_replay.state import CursorStore, ReplayState
from mtopt.model_registry.objects import LocalDirObjects
from mtopt.tasks import TaskCatalogue

CAT = TaskCatalogue.load()


def _episode(i: int, task: str = "lift-red", steps: int = 3):
    return make_episode(f"ep-{i:03d}", task=task, steps=steps, seed=i)


def test_counts_follow_adds_relabels_and_evictions():
    ep = _episode(0)
    cache = ReplayCache(CAT, capacity_bytes=int(held_bytes(ep) * 3.5))
    for i in range(5):  # room for 3: the first two are evicted
        cache.add([(_episode(i), {"lift-red": i % 2 == 0, "lift-any": True}, f"c{i - 1}" if i else "")])
    assert len(cache) == 3 and cache.nbytes <= cache.capacity_bytes
    assert cache.episode_ids() == ["ep-002", "ep-003", "ep-004"]
    assert cache.refill_cursor() == "c1"  # a restart re-reads the store after c1
    counts = cache.counts()
    assert (counts["lift-red"].success_episodes, counts["lift-red"].failure_episodes) == (2, 1)
    assert counts["lift-any"].success_transitions == 9 and counts["lift-any"].bytes == 3 * held_bytes(ep)
    assert cache.relabel("ep-003", {"lift-red": True})
    assert cache.outcomes("ep-003") == {"lift-red": True, "lift-any": True}  # other tasks keep their label
    assert cache.counts()["lift-red"].success_episodes == 3
    assert not cache.relabel("ep-000", {"lift-red": True})  # evicted
    keys, total = cache.eligible([CAT["lift-red"].index, CAT["lift-blue"].index], 1)
    assert keys == [CAT["lift-red"].index] and total == 9


def test_sample_carries_episode_ids_and_rebalances():
    cache = ReplayCache(CAT, capacity_bytes=1 << 30)
    cache.add([(_episode(i), {"lift-red": i < 2, "lift-blue": i >= 8}, "") for i in range(10)])
    keys = [CAT["lift-red"].index, CAT["lift-blue"].index]
    batch = cache.sample(200, np.random.default_rng(0), 0.5, keys)
    assert len(batch.episode_ids) == 200
    for k in keys:
        rows = batch.tasks == k
        assert rows.sum() == 100
        assert 0.4 < batch.successes[rows].mean() < 0.6
    red = batch.tasks == CAT["lift-red"].index
    assert {e for e, s in zip(np.array(batch.episode_ids)[red], batch.successes[red]) if s} <= {"ep-000", "ep-001"}


def test_state_round_trip(tmp_path):
    store = CursorStore(LocalDirObjects(tmp_path, fsync=False))
    assert store.load() == ReplayState()
    state = ReplayState(cursor="c9", refill_cursor="c3", episodes_processed=7, processed_by_task={"lift-red": 7}, sd_version=2)
    store.save(state)
    assert store.load() == state
    (tmp_path / "log_replay" / "cursor.json").write_text("{not json")
    with pytest.raises(ValueError, match="move it away"):
        store.load()
    store.close()


def test_config_from_environment_and_help(capsys):
    from mtopt.log_replay.__main__ import main
    from mtopt.log_replay.config import load_config
    from mtopt.serving import ConfigError

    config = load_config({"MTOPT_LOG_REPLAY_IMPERSONATION": "all", "MTOPT_LOG_REPLAY_BUFFER_BYTES": "1_000_000"})
    assert (config.port, config.impersonation, config.buffer_bytes, config.success_fraction) == (50053, "all", 1_000_000, 0.5)
    for env, variable in (({"MTOPT_LOG_REPLAY_IMPERSONATION": "some"}, "MTOPT_LOG_REPLAY_IMPERSONATION"),
                          ({"MTOPT_LOG_REPLAY_SUCCESS_FRACTION": "1.5"}, "MTOPT_LOG_REPLAY_SUCCESS_FRACTION"),
                          ({"MTOPT_LOG_REPLAY_BACKEND": "s3"}, "MTOPT_LOG_REPLAY_S3_ENDPOINT"),
                          ({"MTOPT_LOG_REPLAY_MALLOC_MMAP_THRESHOLD_BYTES": str(64 << 20)},
                           "MTOPT_LOG_REPLAY_MALLOC_MMAP_THRESHOLD_BYTES"),
                          ({"MTOPT_LOG_REPLAY_MALLOC_TRIM_THRESHOLD_BYTES": "-1"}, "MTOPT_LOG_REPLAY_MALLOC_TRIM_THRESHOLD_BYTES"),
                          ({"MTOPT_LOG_REPLAY_MALLOC_ARENA_MAX": "-2"}, "MTOPT_LOG_REPLAY_MALLOC_ARENA_MAX")):
        with pytest.raises(ConfigError, match=variable):
            load_config(env)
    assert main(["--help-config"]) == 0
    assert "MTOPT_LOG_REPLAY_STORE_ADDRESS" in capsys.readouterr().out


def test_budget_counts_what_a_buffered_episode_really_holds():
    """The per-episode overhead the byte budget adds to an episode's arrays is what decoded
    episodes (decoded as the follower decodes them) and the cache's bookkeeping really take."""
    import gc
    import tracemalloc

    from replay_harness import sim_episodes

    from mtopt.episode_codec import episode_from_proto
    from mtopt.v1 import common_pb2

    payloads = [e.encode() for e in sim_episodes(300, seed=3, max_steps=4)]
    skill_of = {t.name: t.skill for t in CAT}
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = ReplayCache(CAT, capacity_bytes=1 << 40)
        for i, data in enumerate(payloads):
            msg = common_pb2.Episode()
            msg.ParseFromString(data)
            episode = episode_from_proto(msg)
            del msg
            outcomes = {t.name: (i + t.index) % 3 == 0 for t in CAT if t.skill == skill_of[episode.task]}
            cache.add([(episode, outcomes, f"date=2026-11-27/{i:020d}+0+00ff/00000")])
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    arrays = sum(e.nbytes for e in cache._buffer.episodes.values())
    overhead = (held - arrays) / len(payloads)
    assert 0.6 * HELD_EPISODE_OVERHEAD_BYTES <= overhead <= 1.3 * HELD_EPISODE_OVERHEAD_BYTES, overhead
    assert cache.nbytes == sum(held_bytes(e) for e in cache._buffer.episodes.values())
