"""The commit protocol of episode_store over a few object-store primitives (`ObjectStoreBackend`).

An upload costs one object-store write of its own, the data object, created only if absent
(that decides which upload of an id wins). Uploads that run at the same time share one
commit-log write (group commit):

1. ``put`` joins the open batch, whose name (and stored time) is fixed when it opens, and
   creates ``episodes/by-id/<hh>/<id>.pb`` with metadata {sha256, commit: <batch name>};
2. a committer thread closes the batch as soon as it is free and every upload that joined
   has its data object written, writes ``index/log/<batch name>`` listing them, and only then
   are those uploads acknowledged. While it writes, new uploads gather in the next batch.

Idempotency without a read on the common path: when the conditional create finds the object
(S3 412), the store reads its metadata. Other sha256: ALREADY_EXISTS. Same sha256: the batch
it names says whether it was committed (then ``already_existed``); if that batch was never
written (a crash), the episode is committed now in a new batch. GetEpisode reads the data
object (its key follows from the id) and checks that its batch lists it; written batches are
immutable, so they are cached.

Several replicas on one bucket: watchers pass commits older than ``settle_s``. A batch that
is ready later than ``settle_s / 2`` after its stored time (a slow upload held it) is written
under a fresh name instead, and ``index/moved/<old name>`` points there for readers of its
data objects' metadata. A batch named by another writer and not written yet may still be in
flight: a re-upload waits for it up to ``commit_grace_s`` before it commits the episode anew.
"""

from __future__ import annotations

import abc
import collections
import threading
import time
import uuid
from typing import Callable, Iterable

from mtopt.episode_store.backend import EpisodeBackend, EpisodeConflictError, PutResult, StorageUnavailableError
from mtopt.episode_store.layout import (
    LOG_PREFIX,
    MOVED_PREFIX,
    EpisodeRecord,
    NewEpisode,
    batch_name,
    data_key,
    decode_batch,
    encode_batch,
    parse_batch_name,
)
from mtopt.episode_store.log_reader import LogReader


class _Batch:
    """Uploads committed by one commit-log object (guarded by the backend's condition)."""

    def __init__(self, ns: int, name: str, private: bool):
        self.ns, self.name, self.private = ns, name, private
        self.opened = time.monotonic()
        self.closed = False  # the committer took it: uploads finishing now go to a later batch
        self.pending = 0  # joined, data object not written yet
        self.entries: list[tuple[NewEpisode, str]] = []
        self.done = threading.Event()  # set once written (or failed)
        self.error: BaseException | None = None
        self.records: dict[str, EpisodeRecord] = {}


class ObjectStoreBackend(LogReader, EpisodeBackend):
    """Group commit, log reading and layout v1 compatibility over object-store primitives.

    ``settle_s``: how long a commit may take to appear in the log after its stored time
    (several replicas on one bucket; 0 for a single writer, whose commits in flight are
    tracked exactly). ``commit_grace_s``: how long another writer's unwritten batch may still
    be in flight (0: no other writer). ``gather_s``: how long a batch stays open for more
    uploads after its first one joined (fewer log writes under load, that much more latency).
    """

    MAX_BATCH = 256
    straggler_s = 2.0  # how long a batch waits for the data writes of uploads that joined it
    PRIVATE_BYTES = 1 << 20  # episodes this big commit alone: they would hold a shared batch up

    def __init__(self, settle_s: float = 0.0, commit_grace_s: float = 0.0, gather_s: float = 0.003):
        self.settle_s = settle_s
        self.gather_s = gather_s
        self._settle_ns = int(settle_s * 1e9)
        self._grace_ns = int(commit_grace_s * 1e9)
        self._lock = threading.Lock()
        self._last_ns = 0
        self._inflight: set[int] = set()
        self.writer = uuid.uuid4().hex[:16]
        self._cond = threading.Condition()
        self._open: _Batch | None = None
        self._sealed: collections.deque[_Batch] = collections.deque()
        self._active: dict[str, _Batch] = {}
        self._committer: threading.Thread | None = None
        self._stopping = False
        self._init_reader()
        self.on_commit: Callable[[int], None] | None = None
        """Called with the number of episodes of each commit-log batch written (metrics)."""

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
        if self._legacy_layout():
            legacy = self._legacy_record(new.episode_id)
            if legacy is not None:
                self._check_same(new, legacy.sha256)
                return PutResult(legacy, already_existed=True)
        key = data_key(new.episode_id)
        private = len(data) >= self.PRIVATE_BYTES
        batch = self._join(private)
        try:
            created = self._put_if_absent(key, data, {"sha256": new.sha256, "commit": batch.name})
        except BaseException:
            self._leave(batch)
            raise
        if created:
            return PutResult(self._commit(batch, new, key, data), already_existed=False)
        self._leave(batch)
        meta = self._head(key)
        if meta is None:
            raise StorageUnavailableError(f"episode {new.episode_id}: data object {key} vanished while storing it; retry")
        self._check_same(new, meta.get("sha256", ""))
        record = self._committed(new.episode_id, meta.get("commit", ""), wait=True)
        if record is not None:
            return PutResult(record, already_existed=True)
        # Its commit was interrupted (crash): commit it now, in a new batch the object names.
        return PutResult(self._recommit(new, key, data), already_existed=True)

    def _recommit(self, new: NewEpisode, key: str, data: bytes) -> EpisodeRecord:
        """Rewrites the data object naming a new batch and commits it there."""
        batch = self._join(len(data) >= self.PRIVATE_BYTES)
        try:
            self._put(key, data, {"sha256": new.sha256, "commit": batch.name})
        except BaseException:
            self._leave(batch)
            raise
        return self._commit(batch, new, key, data)

    @staticmethod
    def _check_same(new: NewEpisode, stored_sha256: str) -> None:
        if stored_sha256 != new.sha256:
            raise EpisodeConflictError(
                f"episode {new.episode_id} is already stored with sha256 {stored_sha256}, "
                f"not {new.sha256}: episode ids must be unique (use a fresh id for a new episode)"
            )

    def _new_batch(self, private: bool) -> _Batch:
        ns = self._begin_commit()
        batch = _Batch(ns, batch_name(ns, self.writer), private)
        self._active[batch.name] = batch
        return batch

    def _join(self, private: bool) -> _Batch:
        with self._cond:
            if self._stopping:
                raise StorageUnavailableError("the episode backend is closed (the store is stopping); retry on another replica")
            if private:
                batch = self._new_batch(True)
            else:
                batch = self._open
                if batch is None or batch.pending + len(batch.entries) >= self.MAX_BATCH:
                    if batch is not None:
                        self._sealed.append(batch)
                        self._cond.notify()
                    batch = self._open = self._new_batch(False)
                    if self._committer is None:
                        self._committer = threading.Thread(target=self._run_committer, name="episode-store-commit", daemon=True)
                        self._committer.start()
            batch.pending += 1
            return batch

    def _leave(self, batch: _Batch) -> None:
        """The upload will not be in ``batch`` (its data write failed or found the object)."""
        with self._cond:
            batch.pending -= 1
            if batch.pending == 0 and not batch.entries and (batch.private or batch is self._open):
                if batch is self._open:
                    self._open = None
                self._finish(batch, None)
            self._cond.notify()  # only the committer waits on the condition

    def _finish(self, batch: _Batch, error: BaseException | None) -> None:
        batch.error = error
        self._active.pop(batch.name, None)
        self._end_commit(batch.ns)
        batch.done.set()

    def _commit(self, batch: _Batch, new: NewEpisode, key: str, data: bytes) -> EpisodeRecord:
        """Adds a written upload to its batch and returns its record once the batch is durable."""
        with self._cond:
            batch.pending -= 1
            evicted = batch.closed  # the committer stopped waiting for this upload's data write
            if not evicted:
                batch.entries.append((new, key))
            self._cond.notify()  # only the committer waits on the condition
        if evicted:
            return self._recommit(new, key, data)
        if batch.private:
            self._write(batch)
        batch.done.wait()
        if batch.error is not None:
            if isinstance(batch.error, StorageUnavailableError):
                raise StorageUnavailableError(str(batch.error)) from batch.error
            raise batch.error
        return batch.records[new.episode_id]

    def _run_committer(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._sealed:
                        batch = self._sealed.popleft()
                        break
                    wait_s = None
                    if self._open is not None and self._open.entries:
                        # Gather: uploads finishing within gather_s of the first join this batch.
                        wait_s = self._open.opened + self.gather_s - time.monotonic()
                        if wait_s <= 0 or self._stopping:
                            batch, self._open = self._open, None
                            break
                    elif self._stopping:
                        return
                    self._cond.wait(wait_s)
                # Uploads that joined are writing their data objects; one stuck S3 request must
                # not hold every later upload, so stragglers are left to a later batch.
                deadline = time.monotonic() + self.straggler_s
                while batch.pending and time.monotonic() < deadline:
                    self._cond.wait(deadline - time.monotonic())
                batch.closed = True
                if not batch.entries:
                    self._finish(batch, None)
                    continue
            self._write(batch)

    def _write(self, batch: _Batch) -> None:
        """Writes the batch's log object (under a fresh name if it is late) and releases its uploads."""
        error: BaseException | None = None
        late_ns = None
        try:
            name = batch.name
            if self._settle_ns and time.time_ns() - batch.ns > self._settle_ns // 2:
                late_ns = self._begin_commit()
                name = batch_name(late_ns, self.writer)
                self._put(MOVED_PREFIX + batch.name, name.encode(), {})
            body = encode_batch(batch.entries)
            self._put(LOG_PREFIX + name, body, {})
            records = {r.episode_id: r for r in decode_batch(name, body)}
            self._remember(name, records)
            if self.on_commit is not None:
                self.on_commit(len(records))
            if name != batch.name:
                self._remember(batch.name, records)
        except BaseException as e:  # reported to every upload of the batch
            error = e
        finally:
            if late_ns is not None:
                self._end_commit(late_ns)
        with self._cond:
            if error is None:
                batch.records = records
            self._finish(batch, error)

    # -- reading -----------------------------------------------------------------------------
    def _committed(self, episode_id: str, batch: str, wait: bool) -> EpisodeRecord | None:
        """The record of ``episode_id`` if batch ``batch`` is written and lists it, else None.

        ``wait``: first wait for the batch if it may still be in flight (ours, or another
        writer's within ``commit_grace_s`` of its stored time)."""
        parsed = parse_batch_name(batch)
        if parsed is None:
            return None
        while True:
            with self._cond:
                own = self._active.get(batch)
            if own is not None:
                if not wait:
                    return None
                own.done.wait()
                return None if own.error is not None else own.records.get(episode_id)
            records = self._batch_records(batch)
            if records is not None:
                return records.get(episode_id)
            if not wait or parsed[1] == self.writer or time.time_ns() > parsed[0] + self._grace_ns:
                return None
            time.sleep(0.05)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._committer is not None and self._committer is not threading.current_thread():
            self._committer.join(timeout=30)
        with self._cond:  # batches no committer will write: their uploads fail (and are retried)
            for batch in list(self._active.values()):
                if not batch.private:
                    batch.closed = True
                    self._finish(batch, StorageUnavailableError("the episode backend closed before this upload was committed; retry"))
