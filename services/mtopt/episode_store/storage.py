"""Durable episode storage behind one interface, `EpisodeBackend`, with two implementations.

- `LocalDirBackend`: a local directory (the embedded default). Files are written to a temp
  file, fsynced and renamed into place, so a reader never sees half a file; one process owns a
  directory at a time (an flock on ``<dir>/.lock``); the commit log's names are kept in memory
  for fast listing.
- `MinioBackend`: a MinIO (or any S3) bucket through the ``minio`` client. Objects appear
  atomically on PUT; the index/by-id record is created with ``If-None-Match: *`` so concurrent
  uploads of one id through several replicas cannot both commit.

Both share the object layout and the commit protocol of `ObjectStoreBackend` (documented in
`mtopt.episode_store.layout` and docs/storage.md): data object, then index/by-id, then the
index/log entry that makes the episode listed.

Usage (blocking calls: the server runs them in a thread pool)::

    backend = LocalDirBackend(Path("/data/episodes"))     # or MinioBackend(...)
    result = backend.put(new_episode, data)               # PutResult(record, already_existed)
    record = backend.get(episode_id)                      # EpisodeRecord or None
    data = backend.read(record)
    records, last = backend.scan_log(after_cursor, limit=100)
    backend.close()
"""

from __future__ import annotations

import abc
import bisect
import dataclasses
import fcntl
import io
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

from mtopt.episode_store.layout import (
    LOG_PREFIX,
    EpisodeRecord,
    LogName,
    NewEpisode,
    by_id_key,
    data_key,
)
from mtopt.serving.s3 import make_minio_client


class StorageUnavailableError(RuntimeError):
    """The storage backend did not answer or failed; the call may succeed later (UNAVAILABLE)."""


class EpisodeConflictError(RuntimeError):
    """The episode id is already stored with different bytes (ALREADY_EXISTS)."""


@dataclasses.dataclass(frozen=True)
class PutResult:
    record: EpisodeRecord
    already_existed: bool


class EpisodeBackend(abc.ABC):
    """Where episodes live. All methods block; implementations are thread-safe."""

    @abc.abstractmethod
    def put(self, new: NewEpisode, data: bytes) -> PutResult:
        """Stores a verified episode and commits it to the log; idempotent on episode_id.

        Same id and same sha256 as a stored episode: nothing is written (except a missing log
        entry) and ``already_existed`` is True. Same id, other sha256: EpisodeConflictError.
        """

    @abc.abstractmethod
    def get(self, episode_id: str) -> EpisodeRecord | None:
        """The record of a committed (listed) episode, or None."""

    @abc.abstractmethod
    def read(self, record: EpisodeRecord) -> bytes:
        """The stored bytes of an episode (StorageUnavailableError if they are gone)."""

    @abc.abstractmethod
    def scan_log(
        self, after: str, limit: int, match: Callable[[LogName], bool] | None = None,
        max_scan: int = 10_000, max_stored_ns: int | None = None,
    ) -> tuple[list[EpisodeRecord], str, bool]:
        """Commit-log records after cursor ``after`` ("" = from the start), oldest first.

        Scans at most ``max_scan`` log names, stopping after ``limit`` matches or at the first
        entry stored after ``max_stored_ns``. Returns (matching records, cursor of the last
        name scanned, whether the end of the log -- or of ``max_stored_ns`` -- was reached).
        """

    @abc.abstractmethod
    def horizon_ns(self) -> int:
        """Every commit with stored_ns <= this is already in the log (none can appear below it)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Returns if the storage answers; StorageUnavailableError otherwise."""

    def close(self) -> None:
        """Releases connections and locks. Idempotent."""


class ObjectStoreBackend(EpisodeBackend):
    """The commit protocol over a few object-store primitives that subclasses implement.

    ``settle_s`` is how long a commit may take to appear in the log after its stored time
    was taken: watchers see a commit only once it is that old (needed when several replicas
    write one bucket; 0 for a single writer, where in-flight commits are tracked exactly).
    """

    def __init__(self, settle_s: float = 0.0):
        self._settle_ns = int(settle_s * 1e9)
        self._lock = threading.Lock()
        self._last_ns = 0
        self._inflight: set[int] = set()

    # -- primitives ----------------------------------------------------------------------------
    @abc.abstractmethod
    def _put(self, key: str, data: bytes) -> None:
        """Writes an object atomically (readers see all of it or nothing)."""

    @abc.abstractmethod
    def _put_if_absent(self, key: str, data: bytes) -> bool:
        """Creates an object only if none exists; False if one did."""

    @abc.abstractmethod
    def _get(self, key: str) -> bytes | None:
        """An object's bytes, or None if it does not exist."""

    @abc.abstractmethod
    def _exists(self, key: str) -> bool: ...

    # -- public object access (for other stores built on these backends, e.g. model_registry) --
    # Subclasses override the underscore primitives above; these only forward to them.
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

    @abc.abstractmethod
    def _list_log(self, start_after: str, limit: int) -> Iterable[str]:
        """Up to ``limit`` commit-log keys after ``start_after``, in key order."""

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

    # -- protocol ----------------------------------------------------------------------------
    def get(self, episode_id: str) -> EpisodeRecord | None:
        record = self._get_record(episode_id)
        if record is None or not self._exists(record.log_name.key):
            return None  # unknown, or its commit was interrupted (the retry completes it)
        return record

    def _get_record(self, episode_id: str) -> EpisodeRecord | None:
        body = self._get(by_id_key(episode_id))
        return None if body is None else EpisodeRecord.from_json(body)

    def read(self, record: EpisodeRecord) -> bytes:
        data = self._get(record.storage_key)
        if data is None:
            raise StorageUnavailableError(f"episode {record.episode_id}: data object {record.storage_key} is missing")
        return data

    def put(self, new: NewEpisode, data: bytes) -> PutResult:
        existing = self._get_record(new.episode_id)
        if existing is not None:
            return self._put_existing(existing, new)
        key = data_key(new.episode_id, new.robot_id, new.date_ns(time.time_ns()))
        self._put(key, data)
        ns = self._begin_commit()
        try:
            record = EpisodeRecord(**dataclasses.asdict(new), stored_ns=ns, storage_key=key)
            body = record.to_json()
            if not self._put_if_absent(by_id_key(new.episode_id), body):
                # A concurrent upload of the same id (another replica) committed first.
                existing = self._get_record(new.episode_id)
                if existing is None:
                    raise StorageUnavailableError(f"episode {new.episode_id}: index record vanished; retry")
                return self._put_existing(existing, new)
            self._put(record.log_name.key, body)
        finally:
            self._end_commit(ns)
        return PutResult(record, already_existed=False)

    def _put_existing(self, existing: EpisodeRecord, new: NewEpisode) -> PutResult:
        if existing.sha256 != new.sha256:
            raise EpisodeConflictError(
                f"episode {new.episode_id} is already stored with sha256 {existing.sha256}, "
                f"not {new.sha256}: episode ids must be unique (use a fresh id for a new episode)"
            )
        if self._exists(existing.log_name.key):
            return PutResult(existing, already_existed=True)
        # Crashed between the by-id and log writes last time: commit it now, at a new position
        # so that watchers past the old one still see it.
        ns = self._begin_commit()
        try:
            record = dataclasses.replace(existing, stored_ns=ns)
            self._put(by_id_key(record.episode_id), record.to_json())
            self._put(record.log_name.key, record.to_json())
        finally:
            self._end_commit(ns)
        return PutResult(record, already_existed=True)

    def scan_log(self, after, limit, match=None, max_scan=10_000, max_stored_ns=None):
        start = f"{LOG_PREFIX}{after}" if after else ""
        matched: list[LogName] = []
        last, scanned, reached_end = after, 0, False
        while len(matched) < limit and scanned < max_scan:
            batch = list(self._list_log(start, min(1000, max_scan - scanned)))
            if not batch:
                reached_end = True
                break
            for key in batch:
                name = LogName.parse_key(key)
                if max_stored_ns is not None and name.stored_ns > max_stored_ns:
                    reached_end = True
                    break
                scanned += 1
                last, start = name.cursor, key
                if match is None or match(name):
                    matched.append(name)
                    if len(matched) >= limit:
                        break
            if reached_end:
                break
        records = []
        for name in matched:
            body = self._get(name.key)
            if body is not None:
                records.append(EpisodeRecord.from_json(body))
        return records, last, reached_end


class LocalDirBackend(ObjectStoreBackend):
    """Episodes under a local directory, with the bucket layout as paths.

    ``fsync`` (default True) makes every acknowledged episode survive a power cut; turn it
    off only for throwaway test runs.
    """

    def __init__(self, root: Path, *, fsync: bool = True):
        super().__init__(settle_s=0.0)
        self.root = Path(root)
        self._fsync = fsync
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "tmp").mkdir(exist_ok=True)
            self._lock_file = open(self.root / ".lock", "a+")
        except OSError as e:
            raise StorageUnavailableError(f"cannot use episode directory {self.root}: {e}; set a writable directory") from e
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StorageUnavailableError(
                f"episode directory {self.root} is in use by another episode_store; "
                "give each store its own directory (or use the s3 backend for several replicas)"
            ) from None
        for stale in (self.root / "tmp").iterdir():  # half-written files of a crashed process
            stale.unlink(missing_ok=True)
        log_dir = self.root / LOG_PREFIX
        self._log_keys: list[str] = sorted(
            p.relative_to(self.root).as_posix() for p in log_dir.glob("date=*/*")
        ) if log_dir.is_dir() else []
        self._closed = False

    def _path(self, key: str) -> Path:
        return self.root / key

    def _write_tmp(self, data: bytes) -> Path:
        tmp = self.root / "tmp" / uuid.uuid4().hex
        with open(tmp, "wb") as f:
            f.write(data)
            if self._fsync:
                f.flush()
                os.fsync(f.fileno())
        return tmp

    def _sync_dir(self, path: Path) -> None:
        if self._fsync:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_tmp(data)
        os.replace(tmp, path)
        self._sync_dir(path.parent)
        if key.startswith(LOG_PREFIX):
            with self._lock:
                i = bisect.bisect_left(self._log_keys, key)
                if i == len(self._log_keys) or self._log_keys[i] != key:
                    self._log_keys.insert(i, key)

    def _put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_tmp(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        self._sync_dir(path.parent)
        return True

    def _get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _list_log(self, start_after: str, limit: int) -> list[str]:
        with self._lock:
            i = bisect.bisect_right(self._log_keys, start_after) if start_after else 0
            return self._log_keys[i : i + limit]

    def ping(self) -> None:
        if self._closed:
            raise StorageUnavailableError("LocalDirBackend is closed")
        if not os.access(self.root, os.W_OK):
            raise StorageUnavailableError(f"episode directory {self.root} is not writable")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()


class MinioBackend(ObjectStoreBackend):
    """Episodes in a MinIO/S3 bucket (created on first ping if missing and ``create_bucket``)."""

    def __init__(
        self, endpoint: str, bucket: str, access_key: str, secret_key: str, *, secure: bool = False,
        region: str | None = None, create_bucket: bool = True, settle_s: float = 1.0,
        max_connections: int = 32, timeout_s: float = 30.0,
    ):
        super().__init__(settle_s=settle_s)
        self.endpoint, self.bucket, self._create_bucket = endpoint, bucket, create_bucket
        self.client, self._http = make_minio_client(
            endpoint, access_key, secret_key, secure=secure, region=region, max_connections=max_connections, timeout_s=timeout_s,
        )
        self._bucket_ok = False

    def _call(self, what: str, fn, *args, **kwargs):
        from minio.error import S3Error

        try:
            return fn(*args, **kwargs)
        except S3Error as e:
            raise StorageUnavailableError(f"S3 {what} on {self.endpoint}/{self.bucket} failed: {e.code}: {e.message}") from e
        except Exception as e:  # urllib3 connection errors and the like
            raise StorageUnavailableError(f"S3 {what} on {self.endpoint}/{self.bucket} failed: {e}") from e

    def _put(self, key: str, data: bytes) -> None:
        self._call("put", self.client.put_object, self.bucket, key, io.BytesIO(data), len(data))

    def _put_if_absent(self, key: str, data: bytes) -> bool:
        from minio.error import S3Error

        try:
            # Conditional create (If-None-Match: *); minio-py has no public argument for it.
            self.client._put_object(self.bucket, key, data, headers={"If-None-Match": "*", "Content-Type": "application/json"})
            return True
        except S3Error as e:
            if e.code == "PreconditionFailed":
                return False
            raise StorageUnavailableError(f"S3 conditional put on {self.endpoint}/{self.bucket} failed: {e.code}: {e.message}") from e
        except Exception as e:
            raise StorageUnavailableError(f"S3 conditional put on {self.endpoint}/{self.bucket} failed: {e}") from e

    def _get(self, key: str) -> bytes | None:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise StorageUnavailableError(f"S3 get on {self.endpoint}/{self.bucket} failed: {e.code}: {e.message}") from e
        except Exception as e:
            raise StorageUnavailableError(f"S3 get on {self.endpoint}/{self.bucket} failed: {e}") from e
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def _exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, key)
            return True
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject"):
                return False
            raise StorageUnavailableError(f"S3 stat on {self.endpoint}/{self.bucket} failed: {e.code}: {e.message}") from e
        except Exception as e:
            raise StorageUnavailableError(f"S3 stat on {self.endpoint}/{self.bucket} failed: {e}") from e

    def _list_log(self, start_after: str, limit: int) -> list[str]:
        def listing():
            out = []
            for obj in self.client.list_objects(self.bucket, prefix=LOG_PREFIX, recursive=True, start_after=start_after or None):
                out.append(obj.object_name)
                if len(out) >= limit:
                    break
            return out

        return self._call("list", listing)

    def ping(self) -> None:
        if self._bucket_ok:
            self._call("bucket check", self.client.bucket_exists, self.bucket)
            return
        if not self._call("bucket check", self.client.bucket_exists, self.bucket):
            if not self._create_bucket:
                raise StorageUnavailableError(f"bucket {self.bucket} does not exist on {self.endpoint}; create it or allow creation")
            try:
                self._call("make bucket", self.client.make_bucket, self.bucket)
            except StorageUnavailableError as e:
                if "BucketAlreadyOwnedByYou" not in str(e) and "BucketAlreadyExists" not in str(e):
                    raise
        self._bucket_ok = True

    def close(self) -> None:
        self._http.clear()
