"""The storage backends directly: commit protocol, idempotency, crash recovery, listing."""

from __future__ import annotations

import hashlib
import threading

import pytest

from mtopt.episode_store.layout import DATA_PREFIX, LOG_PREFIX, NewEpisode, position_cursor
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
    assert first.record.storage_key == f"episodes/by-id/{hashlib.sha256(b'ep-0001').hexdigest()[:2]}/ep-0001.pb"
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


def test_crash_before_the_data_object_leaves_nothing_visible(open_backend):
    backend = open_backend(crash=True)
    new, data = new_episode(1)
    backend.crash_on = DATA_PREFIX
    with pytest.raises(Crash):
        backend.put(new, data)
    restarted = open_backend()
    assert restarted.get(new.episode_id) is None
    assert restarted.scan_log("", 10)[0] == []
    result = restarted.put(new, data)  # the robot's retry
    assert not result.already_existed
    assert [r.episode_id for r in restarted.scan_log("", 10)[0]] == [new.episode_id]


def test_crash_before_the_log_entry_is_repaired_by_the_retry(open_backend):
    backend = open_backend(crash=True)
    new, data = new_episode(1)
    backend.put(*new_episode(0))
    backend.crash_on = LOG_PREFIX
    with pytest.raises(Crash):
        backend.put(new, data)
    restarted = open_backend()
    assert [r.episode_id for r in restarted.scan_log("", 10)[0]] == ["ep-0000"]  # not listed
    assert restarted.get(new.episode_id) is None  # nor readable
    result = restarted.put(new, data)
    assert result.already_existed
    listed = restarted.scan_log("", 10)[0]
    assert [r.episode_id for r in listed] == ["ep-0000", "ep-0001"]  # listed once, at a new position
    assert restarted.get(new.episode_id) == result.record == listed[1]
    assert restarted.put(new, data).already_existed
    assert len(restarted.scan_log("", 10)[0]) == 2


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


def test_two_replicas_racing_on_one_id_commit_it_once(minio_server):
    bucket = minio_server.new_bucket_name()
    replicas = [MinioBackend(minio_server.endpoint, bucket, minio_server.access_key, minio_server.secret_key, settle_s=0.0)
                for _ in range(2)]
    replicas[0].ping()
    new, data = new_episode(1)
    results, barrier = [], threading.Barrier(4)

    def upload(backend):
        barrier.wait()
        results.append(backend.put(new, data))

    threads = [threading.Thread(target=upload, args=(replicas[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r.already_existed for r in results) == [False, True, True, True]
    assert [r.episode_id for r in replicas[1].scan_log("", 10)[0]] == [new.episode_id]
    for r in replicas:
        r.close()


def test_unreachable_minio_is_unavailable_not_a_crash():
    backend = MinioBackend("127.0.0.1:9", "mtopt", "a", "b", timeout_s=1.0)
    with pytest.raises(StorageUnavailableError, match="127.0.0.1:9"):
        backend.ping()
    backend.close()
