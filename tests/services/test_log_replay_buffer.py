"""Unit tests of log_replay's buffer bookkeeping and persisted state (no servers)."""

from __future__ import annotations

import numpy as np
import pytest

from store_harness import make_episode
from mtopt.log_replay.buffer import ReplayCache
from mtopt.log_replay.state import CursorStore, ReplayState
from mtopt.model_registry.objects import LocalDirObjects
from mtopt.tasks import TaskCatalogue

CAT = TaskCatalogue.load()


def _episode(i: int, task: str = "lift-red", steps: int = 3):
    return make_episode(f"ep-{i:03d}", task=task, steps=steps, seed=i)


def test_counts_follow_adds_relabels_and_evictions():
    ep = _episode(0)
    cache = ReplayCache(CAT, capacity_bytes=int(ep.nbytes * 3.5))
    for i in range(5):  # room for 3: the first two are evicted
        cache.add([(_episode(i), {"lift-red": i % 2 == 0, "lift-any": True}, f"c{i - 1}" if i else "")])
    assert len(cache) == 3 and cache.nbytes <= cache.capacity_bytes
    assert cache.episode_ids() == ["ep-002", "ep-003", "ep-004"]
    assert cache.refill_cursor() == "c1"  # a restart re-reads the store after c1
    counts = cache.counts()
    assert (counts["lift-red"].success_episodes, counts["lift-red"].failure_episodes) == (2, 1)
    assert counts["lift-any"].success_transitions == 9 and counts["lift-any"].bytes == 3 * ep.nbytes
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
                          ({"MTOPT_LOG_REPLAY_MALLOC_TRIM_THRESHOLD_BYTES": "-1"}, "MTOPT_LOG_REPLAY_MALLOC_TRIM_THRESHOLD_BYTES")):
        with pytest.raises(ConfigError, match=variable):
            load_config(env)
    assert main(["--help-config"]) == 0
    assert "MTOPT_LOG_REPLAY_STORE_ADDRESS" in capsys.readouterr().out
