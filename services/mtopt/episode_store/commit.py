"""The commit protocol of episode_store over a few object-store primitives (`ObjectStoreBackend`).

Uploads that arrive together are committed together, in one object-store write (group
commit): a **segment** ``index/log/<batch name>`` holding the records of its episodes and then
their bytes (layout v3, `mtopt.episode_store.layout.encode_segment`). An upload is
acknowledged once the segment that holds it is written, so an episode is listed, watched and
readable exactly when it is durable, and a broken upload is never visible.

1. ``put`` checks the id against the id index (`LogReader`: every committed id, from the log)
   and against the uploads of this process still in flight (a second upload of an id waits for
   the first), then joins the open batch, whose name (and stored time) is fixed when it opens;
2. one of ``max_writes`` writer threads takes the batch once it has gathered uploads for
   ``gather_s`` after the first joined, or ``quiet_s`` after the last joined if that is sooner,
   or at once when it is full, and writes the segment. While every writer is busy, the open
   batch keeps gathering (more uploads per write under load). The writer indexes the
   segment's ids and acknowledges its uploads.

Idempotency: an id already indexed is ``already_existed`` (same sha256) or EpisodeConflictError
(other bytes). A crash after a segment was written but before the acknowledgement leaves the
episode committed; the robot's retry finds it in the index. A crash before it leaves nothing.

Several replicas on one bucket: each replica's index follows the other replicas' segments by
listing the log (`LogReader.refresh_index`, at most every ``refresh_s``, and before every
watch scan), so an id committed through one replica is found by the others. Two replicas that
take uploads of one id within that window can both commit it; readers then see only the first
in log order (the index keeps the first position of every id, and `LogReader.scan_log` skips
the others), so it is listed, watched and counted once. Watchers pass commits older than
``settle_s``; a batch that is ready later than ``settle_s / 2`` after its stored time is
written under a fresh name instead, so they never miss it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Callable, Iterable

from mtopt.episode_store.backend import EpisodeBackend, EpisodeConflictError, PutResult, StorageUnavailableError
from mtopt.episode_store.layout import LOG_PREFIX, EpisodeRecord, NewEpisode, batch_name, decode_batch, encode_segment
from mtopt.episode_store.log_reader import LogReader


def _done(result: PutResult) -> Future:
    future: Future = Future()
    future.set_result(result)
    return future


def _settle(future: Future | asyncio.Future, error: BaseException | None, result) -> None:
    """Completes an upload's future (a copy of a shared error, so tracebacks do not mix); an
    asyncio future only on its loop's thread."""
    if future.done():
        return
    if error is None:
        future.set_result(result())
    elif isinstance(error, StorageUnavailableError):
        copy = StorageUnavailableError(str(error))
        copy.__cause__ = error
        future.set_exception(copy)
    else:
        future.set_exception(error)


def _settle_all(uploads: list[tuple[Future | asyncio.Future, Callable[[], PutResult] | None]], error: BaseException | None) -> None:
    """Completes the futures of a batch's uploads from a writer thread: concurrent ones here,
    asyncio ones with one callback per event loop (one wake-up of the loop per segment, not
    one per upload)."""
    on_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for future, result in uploads:
        if isinstance(future, asyncio.Future):
            on_loop.setdefault(future.get_loop(), []).append((future, result))
        else:
            _settle(future, error, result)
    for loop, items in on_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle_on_loop, items, error)


def _settle_on_loop(items: list, error: BaseException | None) -> None:
    for future, result in items:
        _settle(future, error, result)


class _Batch:
    """Uploads committed by one segment (guarded by the backend's condition)."""

    def __init__(self, ns: int, name: str, private: bool):
        self.ns, self.name, self.private = ns, name, private
        self.opened = self.joined = time.monotonic()
        self.entries: list[tuple[NewEpisode, bytes]] = []
        self.futures: list[Future | asyncio.Future] = []  # one per entry: its PutResult
        self.nbytes = 0
        self.done = threading.Event()  # set once written (or failed)
        self.error: BaseException | None = None
        self.records: dict[str, EpisodeRecord] = {}


class ObjectStoreBackend(LogReader, EpisodeBackend):
    """Group commit, log reading, the id index and older layouts over object-store primitives.

    ``settle_s``: how long a commit may take to appear in the log after its stored time
    (several replicas on one bucket; 0 for a single writer, whose commits in flight are
    tracked exactly). ``gather_s``: how long a batch stays open for more uploads after its
    first one joined; ``quiet_s``: or for how long after its last one joined, if that is sooner.
    ``max_writes``: segment writes in flight at once. ``single_writer``: no
    other process writes this storage (a local directory), so the index never needs a refresh.
    """

    MAX_BATCH = 256
    MAX_BATCH_BYTES = 8 << 20  # a fuller batch is sealed at once
    PRIVATE_BYTES = 1 << 20  # episodes this big commit alone: they would hold a shared batch up

    def __init__(self, settle_s: float = 0.0, gather_s: float = 0.003, max_writes: int = 4, single_writer: bool = False,
                 refresh_s: float = 0.25, quiet_s: float = 0.001):
        self.settle_s = settle_s
        self.gather_s = gather_s
        self.quiet_s = quiet_s
        self.max_writes = max_writes
        self._settle_ns = int(settle_s * 1e9)
        self._lock = threading.Lock()
        self._last_ns = 0
        self._inflight: set[int] = set()
        self.writer = uuid.uuid4().hex[:16]
        self._cond = threading.Condition()
        self._open: _Batch | None = None
        self._sealed: list[_Batch] = []
        self._writing = 0
        self._pending: dict[str, _Batch] = {}  # id -> the batch of its upload in flight
        self._writers: list[threading.Thread] = []
        self._stopping = False
        self._init_reader(single_writer=single_writer, refresh_s=refresh_s)
        self.on_commit: Callable[[int], None] | None = None
        """Called with the number of episodes of each segment written (metrics)."""

    # -- primitives ----------------------------------------------------------------------------
    @abc.abstractmethod
    def _put(self, key: str, data: bytes, meta: dict[str, str] | None = None) -> None:
        """Writes an object atomically (readers see all of it or nothing), with metadata."""

    @abc.abstractmethod
    def _put_if_absent(self, key: str, data: bytes, meta: dict[str, str] | None = None) -> bool:
        """Creates an object only if none exists; False if one did."""

    @abc.abstractmethod
    def _get(self, key: str) -> bytes | None:
        """An object's bytes, or None if it does not exist."""

    @abc.abstractmethod
    def _get_range(self, key: str, offset: int, length: int) -> bytes | None:
        """Up to ``length`` bytes of an object from ``offset`` (fewer at its end), or None if it does not exist."""

    @abc.abstractmethod
    def _get_with_meta(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        """An object's bytes and metadata, or None if it does not exist."""

    @abc.abstractmethod
    def _head(self, key: str) -> dict[str, str] | None:
        """An object's metadata ({} if it has none), or None if it does not exist."""

    @abc.abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def _has_prefix(self, prefix: str) -> bool:
        """Whether any object's key starts with ``prefix``."""

    @abc.abstractmethod
    def _list_log(self, start_after: str, limit: int) -> Iterable[str]:
        """Up to ``limit`` commit-log keys after ``start_after``, in key order."""

    # -- public object access (for other stores built on these backends, e.g. model_registry) --
    def put_object(self, key: str, data: bytes) -> None:
        """Writes an object atomically (readers see all of it or nothing)."""
        self._put(key, data)

    def put_object_if_absent(self, key: str, data: bytes) -> bool:
        """Creates an object only if none exists; False if one did."""
        return self._put_if_absent(key, data)

    def get_object(self, key: str) -> bytes | None:
        """An object's bytes, or None if it does not exist."""
        return self._get(key)

    def object_exists(self, key: str) -> bool:
        """Whether an object exists."""
        return self._exists(key)

    # -- commit clock ------------------------------------------------------------------------
    def _begin_commit(self) -> int:
        with self._lock:
            ns = max(time.time_ns(), self._last_ns + 1)
            self._last_ns = ns
            self._inflight.add(ns)
            return ns

    def _end_commit(self, ns: int) -> None:
        with self._lock:
            self._inflight.discard(ns)

    def horizon_ns(self) -> int:
        with self._lock:
            h = time.time_ns() - self._settle_ns - 1
            if self._inflight:
                h = min(h, min(self._inflight) - 1)
            return h

    # -- upload ------------------------------------------------------------------------------
    def put(self, new: NewEpisode, data: bytes) -> PutResult:
        return self.submit(new, data).result()

    def submit(self, new: NewEpisode, data: bytes) -> Future:
        """`put` without waiting for the segment write: a Future of the PutResult. Blocks only
        to look the id up (an index hit may read a segment header) or while another upload
        of the same id is in flight."""
        if len(data) != new.size_bytes:
            raise ValueError(f"episode {new.episode_id}: {len(data)} bytes, size_bytes says {new.size_bytes}")
        self.load_index()
        if self._legacy_layout():
            legacy = self._legacy_record(new.episode_id)
            if legacy is not None:
                self._check_same(new, legacy.sha256)
                return _done(PutResult(legacy, already_existed=True))
        while True:
            stored = self.lookup(new.episode_id)
            if stored is not None:
                self._check_same(new, stored.sha256)
                return _done(PutResult(stored, already_existed=True))
            future = self._join(new, data)
            if future is not None:
                return future

    def submit_nowait(self, new: NewEpisode, data: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future | None:
        """`submit` from an event loop's thread, when it can neither block nor read storage: the
        index is loaded, the storage holds no layout-v1 records, and the id is new (not
        committed, no upload of it in flight) and joins a shared batch. An asyncio future (of
        ``loop``) of the PutResult then, completed by the segment's writer; else None: call
        `submit` from a thread."""
        if (not self._loaded or self._legacy is not False or len(data) != new.size_bytes
                or len(data) >= self.PRIVATE_BYTES or self.indexed(new.episode_id)):
            return None
        with self._cond:
            if self._stopping or new.episode_id in self._pending or self.indexed(new.episode_id):
                return None
            future = loop.create_future()
            self._enqueue(self._shared_batch(), new, data, future)
        return future

    @staticmethod
    def _check_same(new: NewEpisode, stored_sha256: str) -> None:
        if stored_sha256 != new.sha256:
            raise EpisodeConflictError(
                f"episode {new.episode_id} is already stored with sha256 {stored_sha256}, "
                f"not {new.sha256}: episode ids must be unique (use a fresh id for a new episode)"
            )

    def _new_batch(self, private: bool) -> _Batch:
        ns = self._begin_commit()
        return _Batch(ns, batch_name(ns, self.writer), private)

    def _join(self, new: NewEpisode, data: bytes) -> Future | None:
        """Adds the upload to a batch (a Future of its PutResult); None if an upload of the
        same id was in flight (it has finished now: look the id up again)."""
        private = len(data) >= self.PRIVATE_BYTES
        with self._cond:
            if self._stopping:
                raise StorageUnavailableError("the episode backend is closed (the store is stopping); retry on another replica")
            other = self._pending.get(new.episode_id)
            if other is None:
                if self.indexed(new.episode_id):
                    return None  # committed between the caller's lookup and now
                batch = self._new_batch(True) if private else self._shared_batch()
                future: Future = Future()
                self._enqueue(batch, new, data, future)
        if other is not None:
            other.done.wait()
            return None
        if private:
            self._write(batch)
        return future

    def _shared_batch(self) -> _Batch:
        """The open batch (a new one if none is open); under ``_cond``."""
        batch = self._open
        if batch is None:
            batch = self._open = self._new_batch(False)
            self._start_writers()
            self._cond.notify()
        return batch

    def _enqueue(self, batch: _Batch, new: NewEpisode, data: bytes, future: Future | asyncio.Future) -> None:
        """Adds an upload to ``batch``, sealing a full shared batch; under ``_cond``."""
        batch.entries.append((new, data))
        batch.joined = time.monotonic()
        batch.futures.append(future)
        batch.nbytes += len(data)
        self._pending[new.episode_id] = batch
        if not batch.private and (len(batch.entries) >= self.MAX_BATCH or batch.nbytes >= self.MAX_BATCH_BYTES):
            self._sealed.append(batch)
            self._open = None
            self._cond.notify()

    def _start_writers(self) -> None:
        if not self._writers:
            self._writers = [threading.Thread(target=self._run_writer, name=f"episode-store-segment-{i}", daemon=True)
                             for i in range(self.max_writes)]
            for t in self._writers:
                t.start()

    def _next_batch(self) -> _Batch | None:
        """The next batch to write (None: the backend is closed and nothing is left); under
        ``_cond``. A sealed (full) batch goes at once, the open batch once it has gathered for
        ``gather_s`` or no upload joined it for ``quiet_s``. A writer only asks when it is
        idle: while all ``max_writes`` are busy, the open batch keeps gathering."""
        while True:
            wait_s = None
            if self._sealed:
                return self._sealed.pop(0)
            if self._open is not None:
                batch = self._open
                wait_s = min(batch.opened + self.gather_s, batch.joined + self.quiet_s) - time.monotonic()
                if wait_s <= 0 or self._stopping:
                    self._open = None
                    return batch
            elif self._stopping:
                return None
            self._cond.wait(wait_s)

    def _run_writer(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    return
                self._writing += 1
            try:
                self._write(batch)
            finally:
                with self._cond:
                    self._writing -= 1
                    self._cond.notify_all()

    def _write(self, batch: _Batch) -> None:
        """Writes the batch's segment (under a fresh name if it is late) and releases its uploads."""
        error: BaseException | None = None
        late_ns = None
        records: dict[str, EpisodeRecord] = {}
        try:
            name = batch.name
            if self._settle_ns and time.time_ns() - batch.ns > self._settle_ns // 2:
                late_ns = self._begin_commit()
                name = batch_name(late_ns, self.writer)
            body = encode_segment(batch.entries)
            self._put(LOG_PREFIX + name, body, {})
            records = {r.episode_id: r for r in decode_batch(name, body)}
            self._remember(name, records)
            self.index_batch(name, records.values())
            if self.on_commit is not None:
                self.on_commit(len(records))
        except BaseException as e:  # reported to every upload of the batch
            error = e
        finally:
            if late_ns is not None:
                self._end_commit(late_ns)
        with self._cond:
            batch.records = records
            batch.error = error
            for new, _ in batch.entries:
                self._pending.pop(new.episode_id, None)
            entries, futures = batch.entries, batch.futures
            batch.entries, batch.futures = [], []  # the bytes are written (or failed): do not hold them
            self._end_commit(batch.ns)
            batch.done.set()
            self._cond.notify_all()
        _settle_all([(future, lambda new=new: PutResult(records[new.episode_id], already_existed=False))
                     for (new, _), future in zip(entries, futures)], error)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._writers:  # they write what was gathered, then return
            if t is not threading.current_thread():
                t.join(timeout=30)
        with self._cond:  # anything left (a writer that did not finish): fail, the robot retries
            leftover = ([self._open] if self._open is not None else []) + self._sealed
            self._open, self._sealed = None, []
            for batch in leftover:
                batch.error = StorageUnavailableError("the episode backend closed before this upload was committed; retry")
                for new, _ in batch.entries:
                    self._pending.pop(new.episode_id, None)
                self._end_commit(batch.ns)
                batch.done.set()
                _settle_all([(future, None) for future in batch.futures], batch.error)
