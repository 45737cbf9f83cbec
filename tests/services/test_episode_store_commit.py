"""Group commit of episode_store: shared commit-log segments, late segments, concurrent segment
writes, layouts v1 and v2 data, and watches over several replicas on one bucket."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from store_harness import encode, make_episode
from test_episode_store_api import STORED, Watcher
from test_episode_store_storage import new_episode, open_backend  # noqa: F401 - fixture
from mtopt.episode_store.layout import LOG_PREFIX, EpisodeRecord, batch_name, by_id_key, data_key, parse_batch_name
from mtopt.episode_store.storage import EpisodeConflictError, LocalDirBackend, MinioBackend, StorageUnavailableError
from mtopt.v1 import episode_store_pb2 as es_pb


def log_keys(backend) -> list[str]:
    return list(backend._list_log("", 10_000))


def test_concurrent_uploads_share_batches_listed_once_in_order(open_backend):
    backend = open_backend()
    episodes = [new_episode(i, robot=f"robot-{i % 4}") for i in range(32)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda e: backend.put(*e), episodes))
    assert not any(r.already_existed for r in results)
    records, last, end = backend.scan_log("", 1000)
    assert end and sorted(r.episode_id for r in records) == sorted(e.episode_id for e, _ in episodes)
    assert [r.cursor for r in records] == sorted({r.cursor for r in records})  # strictly increasing, unique
    assert {r.episode_id: r for r in records} == {r.record.episode_id: r.record for r in results}
    batches = log_keys(backend)
    assert all(parse_batch_name(k[len(LOG_PREFIX):]) for k in batches)
    assert len(batches) < len(episodes), "concurrent uploads should share commit-log batches"
    # A cursor in the middle of a batch resumes exactly after it, also from a fresh process.
    shared = next(i for i in range(1, len(records)) if records[i].stored_ns == records[i - 1].stored_ns)
    for reader in (backend, open_backend()):
        rest, _, end = reader.scan_log(records[shared - 1].cursor, 1000)
        assert [r.cursor for r in rest] == [r.cursor for r in records[shared:]] and end
    robot2, _, _ = backend.scan_log("", 1000, match=lambda n: n.robot_id == "robot-2")
    assert [r.episode_id for r in robot2] == [r.episode_id for r in records if r.robot_id == "robot-2"]
    first_page, cursor, end = backend.scan_log("", 5)
    assert len(first_page) == 5 and not end and cursor == records[4].cursor


def test_submit_nowait_joins_only_new_ids_it_can_take_without_io_or_waiting(open_backend):
    """The event loop's fast path: an asyncio future for a new id; None (the caller submits
    from a thread) whenever taking the upload could read storage or wait."""
    backend = open_backend()
    loop = asyncio.new_event_loop()
    try:
        first, first_data = new_episode(0)
        assert backend.submit_nowait(first, first_data, loop) is None  # index not loaded, layout not known yet
        assert not backend.put(first, first_data).already_existed  # loads the index, learns the layout
        assert backend.submit_nowait(first, first_data, loop) is None  # committed: a duplicate reads its segment
        assert backend.submit_nowait(*new_episode(1, data=b"x" * backend.PRIVATE_BYTES), loop) is None  # private segment
        assert backend.submit_nowait(new_episode(1)[0], b"short", loop) is None  # size_bytes disagrees

        news = [new_episode(i, robot=f"robot-{i % 2}") for i in range(1, 9)]
        futures = [backend.submit_nowait(new, data, loop) for new, data in news[:6]]
        assert all(isinstance(f, asyncio.Future) for f in futures)
        assert backend.submit_nowait(*news[0], loop) is None  # in flight: the caller waits in a thread
        threaded = [backend.submit(new, data) for new, data in news[6:]]  # the same batches, from a thread's path

        async def results():
            return await asyncio.gather(*futures, *(asyncio.wrap_future(f) for f in threaded))

        done = loop.run_until_complete(asyncio.wait_for(results(), 30))
        assert [r.record.episode_id for r in done] == [new.episode_id for new, _ in news]
        assert not any(r.already_existed for r in done)
        records, _, end = backend.scan_log("", 100)
        assert end and sorted(r.episode_id for r in records) == sorted(["ep-0000", *(new.episode_id for new, _ in news)])
        assert {r.episode_id: r for r in records if r.episode_id != "ep-0000"} == {r.record.episode_id: r.record for r in done}
        assert backend.put(*news[0]).already_existed and backend.submit_nowait(*news[0], loop) is None
        with pytest.raises(EpisodeConflictError):
            backend.put(*new_episode(3, data=b"other bytes"))
        backend.close()
        assert backend.submit_nowait(*new_episode(20), loop) is None  # stopping: submit raises UNAVAILABLE
        with pytest.raises(StorageUnavailableError):
            backend.submit(*new_episode(20))
    finally:
        loop.close()


def test_layout_v1_episodes_stay_readable_and_idempotent(open_backend):
    backend = open_backend()
    old, old_data = new_episode(1)
    record = EpisodeRecord(**{**old.__dict__}, stored_ns=1_700_000_000_000_000_000,
                           storage_key=f"episodes/date=2023-11-14/robot=robot-0/{old.episode_id}.pb")
    backend.put_object(record.storage_key, old_data)
    backend.put_object(by_id_key(old.episode_id), record.to_json())
    backend.put_object(record.log_name.key, record.to_json())
    backend = open_backend()  # a store started on v1 data
    assert backend.get(old.episode_id) == record
    assert backend.fetch(old.episode_id) == (record, old_data)
    assert backend.put(old, old_data).already_existed
    with pytest.raises(EpisodeConflictError):
        backend.put(*new_episode(1, data=b"other bytes"))
    new = backend.put(*new_episode(2)).record
    records, _, end = backend.scan_log("", 100)
    assert [r.episode_id for r in records] == [old.episode_id, new.episode_id] and end
    rest, _, _ = backend.scan_log(record.cursor, 100)  # a v1 cursor a consumer persisted
    assert [r.episode_id for r in rest] == [new.episode_id]


def test_layout_v2_episodes_stay_readable_and_idempotent(open_backend):
    """A bucket written before segments: one data object per episode, JSON batches."""
    backend = open_backend()
    old, old_data = new_episode(1)
    name = batch_name(1_700_000_000_000_000_000, "0123456789abcdef")
    backend.put_object(data_key(old.episode_id), old_data)
    record = {**old.__dict__, "metadata": dict(old.metadata), "storage_key": data_key(old.episode_id)}
    backend.put_object(LOG_PREFIX + name, json.dumps({"v": 2, "records": [record]}).encode())
    backend = open_backend()  # a store started on v2 data
    got = backend.get(old.episode_id)
    assert got.storage_key == data_key(old.episode_id) and got.data_offset == 0 and got.cursor == f"{name}/00000"
    assert backend.fetch(old.episode_id) == (got, old_data)
    assert backend.put(old, old_data).already_existed
    with pytest.raises(EpisodeConflictError):
        backend.put(*new_episode(1, data=b"other bytes"))
    new = backend.put(*new_episode(2)).record
    records, _, end = backend.scan_log("", 100)
    assert [r.episode_id for r in records] == [old.episode_id, new.episode_id] and end
    assert [r.episode_id for r in backend.scan_log(got.cursor, 100)[0]] == [new.episode_id]
    assert hashlib.sha256(backend.read(records[1])).hexdigest() == records[1].sha256


class SlowLogWrites(MinioBackend):
    delay_s = 0.0

    def _put(self, key, data, meta=None):
        if key.startswith(LOG_PREFIX):
            time.sleep(self.delay_s)
        super()._put(key, data, meta)


def minio_backend(minio, bucket, cls=MinioBackend, **kwargs):
    backend = cls(minio.endpoint, bucket, minio.access_key, minio.secret_key, **kwargs)
    backend.ping()
    return backend


def test_a_late_segment_is_written_under_a_fresh_name(minio_server):
    bucket = minio_server.new_bucket_name()

    class LateSegment(MinioBackend):
        def _write(self, batch):
            time.sleep(0.15)  # longer than settle_s / 2: watchers of other replicas may have passed its name
            super()._write(batch)

    slow = minio_backend(minio_server, bucket, LateSegment, settle_s=0.2)
    new, data = new_episode(1)
    before = time.time_ns()
    result = slow.put(new, data)
    (key,) = log_keys(slow)
    assert result.record.stored_ns > before + 0.1e9 and key == LOG_PREFIX + result.record.cursor.rsplit("/", 1)[0]
    reader = minio_backend(minio_server, bucket)  # no cache: the index is read from the log
    assert reader.get(new.episode_id) == result.record
    assert reader.put(new, data).already_existed
    assert [r.episode_id for r in reader.scan_log("", 10)[0]] == [new.episode_id]
    for b in (slow, reader):
        b.close()


def test_s3_errors_of_the_upload_path_are_unavailable(minio_server):
    backend = MinioBackend(minio_server.endpoint, minio_server.new_bucket_name(), minio_server.access_key,
                           minio_server.secret_key, create_bucket=False, region="us-east-1")
    with pytest.raises(StorageUnavailableError, match="NoSuchBucket"):
        backend.put(*new_episode(1))
    wrong = MinioBackend(minio_server.endpoint, "mtopt", minio_server.access_key, "not-the-secret", region="us-east-1")
    with pytest.raises(StorageUnavailableError):
        wrong.put(*new_episode(1))
    for b in (backend, wrong):
        b.close()


def test_watch_over_two_replicas_sees_every_upload_once_in_order(make_store, backend_kind, minio_server):
    if backend_kind == "local":
        pytest.skip("one directory has one store process; replicas share a bucket")
    first = make_store(watch_settle_s=0.3)
    second = make_store(s3_bucket=first.config.s3_bucket, watch_settle_s=0.3)
    watcher = Watcher(first.stub, backfill=True)
    episodes = [make_episode(robot_id=f"robot-{i % 3}", seed=i) for i in range(24)]
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda i: (first, second)[i % 2].upload(encode(episodes[i])), range(len(episodes))))
    assert not any(r.already_existed for r in replies)
    watcher.wait_for(lambda evs: len([e for e in evs if e.type == STORED]) >= len(episodes))
    time.sleep(0.5)
    stored = [e for e in watcher.events if e.type == STORED]
    assert sorted(watcher.stored_ids()) == sorted(e.episode_id for e in episodes)  # each once
    assert [e.cursor for e in stored] == sorted(e.cursor for e in stored)
    listed = second.list_all()
    assert [s.episode_id for s in listed] == watcher.stored_ids()  # one order for every replica
    resumed = Watcher(second.stub, cursor=stored[10].cursor)
    resumed.wait_for(lambda evs: len([e for e in evs if e.type == STORED]) >= len(episodes) - 11)
    assert resumed.stored_ids() == watcher.stored_ids()[11:]
    for w in (watcher, resumed):
        w.cancel()


def test_concurrent_uploads_through_the_service_are_group_committed(make_store):
    store = make_store()
    episodes = [make_episode(robot_id=f"robot-{i % 4}", seed=i) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda e: store.upload(encode(e)), episodes))
    assert not any(r.already_existed for r in replies)
    assert store.metric("mtopt_episode_store_commit_batch_episodes_sum") == len(episodes)
    batches = store.metric("mtopt_episode_store_commit_batches_total")
    assert 1 <= batches == store.metric("mtopt_episode_store_commit_batch_episodes_count") < len(episodes)
    assert sorted(s.episode_id for s in store.list_all()) == sorted(e.episode_id for e in episodes)
    store.restart()  # nothing acknowledged is lost, and the segments read back the same
    assert store.metric("mtopt_episode_store_indexed_episodes") == len(episodes)  # loaded before SERVING
    assert sorted(s.episode_id for s in store.list_all()) == sorted(e.episode_id for e in episodes)
    for e in episodes[:3]:
        assert store.stub.GetEpisode(es_pb.GetEpisodeRequest(episode_id=e.episode_id), timeout=10).episode.episode_id == e.episode_id


def test_a_stuck_segment_write_does_not_hold_the_other_uploads(backend_kind, tmp_path, request):
    base = LocalDirBackend if backend_kind == "local" else MinioBackend

    class OneSlowSegment(base):
        gather_s = 0.0

        def _put(self, key, data, meta=None):
            if key.startswith(LOG_PREFIX) and b'"ep-0000"' in data[:4096]:
                time.sleep(1.0)  # one storage request hangs; later segments are written meanwhile
            return super()._put(key, data, meta)

    if backend_kind == "local":
        backend = OneSlowSegment(tmp_path / "store", fsync=False)
    else:
        minio = request.getfixturevalue("minio_server")
        backend = minio_backend(minio, minio.new_bucket_name(), OneSlowSegment, settle_s=0.0)
    done: dict[str, float] = {}

    def upload(i):
        if i:
            time.sleep(0.1)  # after the slow upload's segment was sealed
        result = backend.put(*new_episode(i))
        done[result.record.episode_id] = time.monotonic()
        return result

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(upload, range(4)))
    assert not any(r.already_existed for r in results)
    assert max(done[f"ep-{i:04d}"] for i in (1, 2, 3)) < done["ep-0000"] - 0.3
    records, _, _ = backend.scan_log("", 100)
    assert sorted(r.episode_id for r in records) == [f"ep-{i:04d}" for i in range(4)]
    assert [r.cursor for r in records] == sorted(r.cursor for r in records)
    assert backend.get("ep-0000") == results[0].record and results[0].record.stored_ns < results[1].record.stored_ns
    assert backend.put(*new_episode(0)).already_existed
    backend.close()


def test_uploads_gather_while_every_segment_writer_is_busy(backend_kind, tmp_path, request):
    """With every writer busy, the uploads that arrive join the open batch: one segment for
    all of them once a writer is free, however short ``gather_s`` is."""
    base = LocalDirBackend if backend_kind == "local" else MinioBackend
    release = threading.Event()

    class HeldFirstSegment(base):
        def _put(self, key, data, meta=None):
            if key.startswith(LOG_PREFIX) and b'"ep-0000"' in data[:4096]:
                release.wait(30)  # the first segment's write is in flight until released
            return super()._put(key, data, meta)

    if backend_kind == "local":
        backend = HeldFirstSegment(tmp_path / "store", fsync=False, gather_s=0.0, max_writes=1)
    else:
        minio = request.getfixturevalue("minio_server")
        backend = minio_backend(minio, minio.new_bucket_name(), HeldFirstSegment, settle_s=0.0, gather_s=0.0, max_writes=1)
    first = backend.submit(*new_episode(0))
    deadline = time.monotonic() + 30
    while backend._writing == 0 and time.monotonic() < deadline:  # the only writer took it and is held
        time.sleep(0.01)
    behind = [backend.submit(*new_episode(i)) for i in range(1, 6)]
    time.sleep(0.2)
    assert not first.done() and not any(f.done() for f in behind)  # gathering behind the held write
    release.set()
    results = [f.result(timeout=30) for f in (first, *behind)]
    assert not any(r.already_existed for r in results)
    assert len({r.record.storage_key for r in results[1:]}) == 1  # the five behind it: one segment
    assert results[0].record.storage_key != results[1].record.storage_key
    assert len(log_keys(backend)) == 2
    backend.close()


def test_a_batch_goes_once_uploads_stop_joining_it(open_backend):
    """``quiet_s`` after the last upload joined, the batch is written, long before ``gather_s``."""
    backend = open_backend()
    backend.gather_s, backend.quiet_s = 600.0, 0.05  # were gather_s waited for, the futures would time out
    with backend._cond:  # (re-entrant) all five join before a writer looks at the batch
        futures = [backend.submit(*new_episode(i)) for i in range(5)]
    results = [f.result(timeout=30) for f in futures]
    assert not any(r.already_existed for r in results)
    assert len({r.record.storage_key for r in results}) == 1 and len(log_keys(backend)) == 1
    assert backend.submit(*new_episode(9)).result(timeout=30).record.episode_id == "ep-0009"  # a lone one too
