"""The storage backends directly: commit protocol, idempotency, crash recovery, listing, the
id index across replicas and restarts."""

from __future__ import annotations

import dataclasses
import hashlib
import threading

import pytest

from mtopt.episode_store.layout import LOG_PREFIX, NewEpisode, position_cursor, segment_header_length
from mtopt.episode_store.log_reader import HEADER_READ_BYTES
from mtopt.episode_store.storage import EpisodeConflictError, LocalDirBackend, MinioBackend, StorageUnavailableError


class Crash(Exception):
    """Stands for the process dying at this point."""


def crashing(base):
    class Crashing(base):
        crash_on: str | None = None  # key prefix whose write "kills the process"

        def _put(self, key, data, meta=None):
            if self.crash_on and key.startswith(self.crash_on):
                raise Crash(key)
            super()._put(key, data, meta)

        def _put_if_absent(self, key, data, meta=None):
            if self.crash_on and key.startswith(self.crash_on):
                raise Crash(key)
            return super()._put_if_absent(key, data, meta)

    return Crashing


@pytest.fixture
def open_backend(backend_kind, tmp_path, request):
    """open_backend(crashing=False) -> a backend on this test's storage (same storage every call)."""
    opened = []
    bucket = None

    def factory(crash: bool = False):
        nonlocal bucket
        if backend_kind == "local":
            cls = crashing(LocalDirBackend) if crash else LocalDirBackend
            for b in opened:  # one process per directory: "restart" closes the previous one
                b.close()
            b = cls(tmp_path / "store", fsync=False)
        else:
            minio = request.getfixturevalue("minio_server")
            bucket = bucket or minio.new_bucket_name()
            cls = crashing(MinioBackend) if crash else MinioBackend
            b = cls(minio.endpoint, bucket, minio.access_key, minio.secret_key, settle_s=0.0)
            b.ping()
        opened.append(b)
        return b

    yield factory
    for b in opened:
        b.close()


def new_episode(i: int, robot="robot-0", task="lift-red", data: bytes | None = None, end_ns: int | None = None):
    data = data if data is not None else f"episode-{i}".encode() * 10
    return NewEpisode(
        episode_id=f"ep-{i:04d}", robot_id=robot, task=task, sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data), num_steps=3, end_ns=end_ns if end_ns is not None else 1_700_000_000_000_000_000 + i,
        metadata={"i": str(i)},
    ), data


def test_put_get_read_and_idempotency(open_backend):
    backend = open_backend()
    new, data = new_episode(1)
    first = backend.put(new, data)
    assert not first.already_existed
    # layout v3: the bytes live in the commit-log segment that lists the episode
    assert first.record.storage_key == LOG_PREFIX + first.record.cursor.rsplit("/", 1)[0]
    assert first.record.data_offset > 0 and backend._get(first.record.storage_key).endswith(data)
    assert backend.get("ep-0001") == first.record
    assert backend.read(first.record) == data
    again = backend.put(new, data)
    assert again.already_existed and again.record == first.record
    other, other_data = new_episode(1, data=b"different bytes")
    with pytest.raises(EpisodeConflictError, match="already stored with sha256"):
        backend.put(other, other_data)
    assert backend.read(backend.get("ep-0001")) == data
    assert backend.get("ep-9999") is None
    records, _, end = backend.scan_log("", 10)
    assert [r.episode_id for r in records] == ["ep-0001"] and end


def test_scan_log_orders_filters_and_pages(open_backend):
    backend = open_backend()
    for i in range(12):
        backend.put(*new_episode(i, robot=f"robot-{i % 3}", task="lift-red" if i % 2 else "place-any"))
    records, last, end = backend.scan_log("", 100)
    assert [r.episode_id for r in records] == [f"ep-{i:04d}" for i in range(12)] and end
    assert [r.stored_ns for r in records] == sorted(r.stored_ns for r in records)
    assert last == records[-1].cursor
    page, last, end = backend.scan_log("", 5)
    assert len(page) == 5 and not end and last == page[-1].cursor
    rest, _, end = backend.scan_log(last, 100)
    assert [r.episode_id for r in page + rest] == [r.episode_id for r in records] and end
    robot1, _, _ = backend.scan_log("", 100, match=lambda n: n.robot_id == "robot-1")
    assert [r.episode_id for r in robot1] == ["ep-0001", "ep-0004", "ep-0007", "ep-0010"]
    limited, last, end = backend.scan_log("", 100, match=lambda n: n.task == "lift-red", max_scan=4)
    assert [r.episode_id for r in limited] == ["ep-0001", "ep-0003"] and not end
    assert last == records[3].cursor  # stopped after 4 scanned entries
    resumed, _, end = backend.scan_log(last, 100, match=lambda n: n.task == "lift-red")
    assert [r.episode_id for r in resumed] == [f"ep-{i:04d}" for i in range(5, 12, 2)] and end
    upto, _, end = backend.scan_log("", 100, max_stored_ns=records[5].stored_ns)
    assert len(upto) == 6 and end
    after_position, _, _ = backend.scan_log(position_cursor(records[5].stored_ns), 100)
    assert [r.episode_id for r in after_position] == [r.episode_id for r in records[6:]]


def test_crash_before_the_segment_is_written_leaves_nothing_visible(open_backend):
    backend = open_backend(crash=True)
    new, data = new_episode(1)
    backend.put(*new_episode(0))
    backend.crash_on = LOG_PREFIX
    with pytest.raises(Crash):
        backend.put(new, data)
    assert backend.get(new.episode_id) is None
    restarted = open_backend()
    assert restarted.get(new.episode_id) is None
    assert [r.episode_id for r in restarted.scan_log("", 10)[0]] == ["ep-0000"]
    result = restarted.put(new, data)  # the robot's retry
    assert not result.already_existed
    assert [r.episode_id for r in restarted.scan_log("", 10)[0]] == ["ep-0000", "ep-0001"]


def test_crash_after_the_segment_before_the_ack_is_found_by_the_retry(open_backend):
    backend = open_backend()
    new, data = new_episode(1)

    def die(_episodes):
        raise Crash("after the segment was written")

    backend.on_commit = die
    with pytest.raises(Crash):
        backend.put(new, data)  # never acknowledged, but durable
    restarted = open_backend()  # its index is read from the log
    committed = restarted.get(new.episode_id)
    assert committed is not None and restarted.read(committed) == data
    result = restarted.put(new, data)  # the robot's retry
    assert result.already_existed and result.record == committed
    with pytest.raises(EpisodeConflictError):
        restarted.put(*new_episode(1, data=b"other bytes"))
    assert [r.episode_id for r in restarted.scan_log("", 10)[0]] == [new.episode_id]


def test_horizon_stays_below_commits_in_flight(open_backend):
    backend = open_backend()
    ns = backend._begin_commit()
    assert backend.horizon_ns() < ns
    backend._end_commit(ns)
    assert backend.horizon_ns() >= ns


def test_local_directory_has_one_owner_and_no_stale_temp_files(tmp_path):
    backend = LocalDirBackend(tmp_path / "store", fsync=True)
    with pytest.raises(StorageUnavailableError, match="in use by another episode_store"):
        LocalDirBackend(tmp_path / "store")
    backend.put(*new_episode(1))
    (tmp_path / "store" / "tmp" / "half-written").write_bytes(b"x")
    backend.close()
    reopened = LocalDirBackend(tmp_path / "store")
    try:
        assert list((tmp_path / "store" / "tmp").iterdir()) == []
        assert [r.episode_id for r in reopened.scan_log("", 10)[0]] == ["ep-0001"]
    finally:
        reopened.close()


def replicas_on(minio_server, n: int, **kwargs) -> list[MinioBackend]:
    bucket = minio_server.new_bucket_name()
    out = [MinioBackend(minio_server.endpoint, bucket, minio_server.access_key, minio_server.secret_key, settle_s=0.0, **kwargs)
           for _ in range(n)]
    out[0].ping()
    return out


def test_an_id_stored_through_one_replica_is_known_to_the_others(minio_server):
    first, second = replicas_on(minio_server, 2, refresh_s=0.0)
    new, data = new_episode(1)
    assert second.get(new.episode_id) is None  # loads its index (empty)
    stored = first.put(new, data)
    assert second.get(new.episode_id) == stored.record  # found by refreshing the index
    again = second.put(new, data)
    assert again.already_existed and again.record == stored.record
    with pytest.raises(EpisodeConflictError):
        second.put(*new_episode(1, data=b"other bytes"))
    for r in (first, second):
        r.close()


def test_two_replicas_racing_on_one_id_list_it_once(minio_server):
    # refresh_s: the replicas do not see each other's commits in time, so both commit the id
    first, second = replicas_on(minio_server, 2, refresh_s=3600)
    for r in (first, second):
        r.load_index()
    new, data = new_episode(1)
    results, barrier = [], threading.Barrier(4)

    def upload(backend):
        barrier.wait()
        results.append(backend.put(new, data))

    threads = [threading.Thread(target=upload, args=((first, second)[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4 and sorted(r.already_existed for r in results) == [False, False, True, True]
    assert len([k for k in first._list_log("", 100)]) == 2  # committed twice ...
    winner = min((r.record for r in results), key=lambda r: r.cursor)
    fresh = MinioBackend(minio_server.endpoint, first.bucket, minio_server.access_key, minio_server.secret_key, settle_s=0.0)
    for reader in (first, second, fresh):  # ... but every reader lists and reads it once, the first
        listed = reader.scan_log("", 10)[0]
        assert [r.cursor for r in listed] == [winner.cursor]
        assert reader.scan_log("", 10, max_stored_ns=reader.horizon_ns())[0] == listed  # the watch path too
        assert reader.get(new.episode_id) == winner and reader.read(winner) == data
    for r in (first, second, fresh):
        r.close()


def test_unreachable_minio_is_unavailable_not_a_crash():
    backend = MinioBackend("127.0.0.1:9", "mtopt", "a", "b", timeout_s=1.0)
    with pytest.raises(StorageUnavailableError, match="127.0.0.1:9"):
        backend.ping()
    backend.close()


def test_a_segment_header_longer_than_the_first_read_is_read_whole(open_backend):
    backend = open_backend()
    episodes = []
    for i in range(48):
        new, data = new_episode(i)
        episodes.append((dataclasses.replace(new, metadata={"note": "x" * 600, "i": str(i)}), data))
    with backend._cond:  # (re-entrant) no writer takes the open batch before all of them joined it
        futures = [backend.submit(*e) for e in episodes]
    results = [f.result(timeout=30) for f in futures]
    (key,) = list(backend._list_log("", 10))
    assert segment_header_length(backend._get_range(key, 0, 64)) > HEADER_READ_BYTES
    reopened = open_backend()  # no cache: the index is built from the segment's header
    reopened.load_index()
    assert reopened.indexed_episodes == len(episodes)
    for (new, data), result in zip(episodes, results):
        assert reopened.get(new.episode_id) == result.record and reopened.read(result.record) == data
    assert sorted(r.episode_id for r in reopened.scan_log("", 100)[0]) == sorted(e.episode_id for e, _ in episodes)
