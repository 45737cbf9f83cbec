"""EpisodeSpool: atomic writes, order, restart recovery, the full policy, rejection, locking."""

from __future__ import annotations

import json
import os
import threading

import pytest

from mtopt_agent.spool import EpisodeSpool, SpoolError


def test_put_is_durable_ordered_and_deleted_only_on_ack(tmp_path):
    with EpisodeSpool(tmp_path / "spool", max_bytes=1 << 20) as spool:
        entries = [spool.put(f"ep{i}", bytes([i]) * (10 + i)) for i in range(5)]
        assert [e.episode_id for e in spool.pending()] == [f"ep{i}" for i in range(5)]
        assert spool.depth == 5 and spool.nbytes == sum(10 + i for i in range(5))
        assert spool.read(entries[2]) == bytes([2]) * 12
        assert spool.oldest(timeout=0).episode_id == "ep0"
        spool.ack(entries[0])
        spool.ack(entries[0])  # idempotent
        assert not entries[0].path.exists()
        assert [e.episode_id for e in spool.pending()] == ["ep1", "ep2", "ep3", "ep4"]
        assert spool.depth == 4


def test_restart_finds_pending_episodes_in_order_and_continues_numbering(tmp_path):
    d = tmp_path / "spool"
    with EpisodeSpool(d, max_bytes=1 << 20) as spool:
        for i in range(3):
            spool.put(f"ep{i}", b"x" * 7)
        spool.ack(spool.pending()[1])
    # A write that was interrupted by a crash leaves only a hidden temp file.
    (d / ".000000000004-ep3.episode.tmp").write_bytes(b"half")
    with EpisodeSpool(d, max_bytes=1 << 20) as spool:
        assert [e.episode_id for e in spool.pending()] == ["ep0", "ep2"]
        assert spool.nbytes == 14
        assert not (d / ".000000000004-ep3.episode.tmp").exists()
        new = spool.put("ep9", b"y")
        assert new.sequence > max(e.sequence for e in spool.pending()[:-1])
        assert [e.episode_id for e in spool.pending()] == ["ep0", "ep2", "ep9"]


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    d = tmp_path / "spool"
    spool = EpisodeSpool(d, max_bytes=1 << 20)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        spool.put("ep0", b"data")
    monkeypatch.undo()
    assert spool.depth == 0
    assert [p.name for p in d.iterdir() if p.is_file() and p.name != ".lock"] == []
    spool.close()


def test_full_spool_pauses_until_an_ack_makes_room(tmp_path):
    with EpisodeSpool(tmp_path / "spool", max_bytes=100) as spool:
        first = spool.put("ep0", b"a" * 60)
        assert not spool.full
        spool.put("ep1", b"b" * 60)  # the soft mark: the episode in progress is always written
        assert spool.full and spool.depth == 2
        assert spool.wait_until_not_full(timeout=0.01) is False
        stop = threading.Event()
        stop.set()
        assert spool.wait_until_not_full(stop=stop) is False
        threading.Timer(0.05, spool.ack, args=(first,)).start()
        assert spool.wait_until_not_full(timeout=30) is True
        assert not spool.full


def test_reject_keeps_the_episode_with_the_error(tmp_path):
    d = tmp_path / "spool"
    with EpisodeSpool(d, max_bytes=1 << 20) as spool:
        entry = spool.put("bad", b"payload")
        target = spool.reject(entry, "INVALID_ARGUMENT", "unknown task 'x'")
        assert spool.depth == 0 and spool.rejected_count == 1
        assert target.read_bytes() == b"payload" and target.parent.name == "rejected"
        [(path, error)] = spool.rejected()
        assert path == target and error["code"] == "INVALID_ARGUMENT" and "unknown task" in error["message"]
        assert json.loads((d / "rejected" / (target.name + ".error.json")).read_text())["episode_id"] == "bad"
    with EpisodeSpool(d, max_bytes=1 << 20) as spool:  # rejected episodes are not pending after a restart
        assert spool.depth == 0 and spool.rejected_count == 1
        assert spool.put("next", b"z").sequence > entry.sequence


def test_one_spool_directory_per_agent(tmp_path):
    with EpisodeSpool(tmp_path / "spool", max_bytes=10):
        with pytest.raises(SpoolError, match="in use by another agent"):
            EpisodeSpool(tmp_path / "spool", max_bytes=10)
    EpisodeSpool(tmp_path / "spool", max_bytes=10).close()  # released on close


def test_invalid_episode_ids_are_refused(tmp_path):
    with EpisodeSpool(tmp_path / "spool", max_bytes=10) as spool:
        with pytest.raises(ValueError, match="invalid"):
            spool.put("../escape", b"x")


def test_rejected_episodes_count_towards_the_bound(tmp_path):
    d = tmp_path / "spool"
    with EpisodeSpool(d, max_bytes=100) as spool:
        spool.reject(spool.put("bad", b"r" * 70), "INVALID_ARGUMENT", "refused")
        assert not spool.full and spool.rejected_bytes == 70
        spool.put("next", b"p" * 40)
        assert spool.full  # a store that refuses everything pauses the robot, it does not fill the disk
    with EpisodeSpool(d, max_bytes=100) as spool:
        assert spool.full and spool.rejected_bytes == 70
