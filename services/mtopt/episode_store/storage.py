"""Durable episode storage: the two `EpisodeBackend` implementations.

- `LocalDirBackend`: a local directory (the embedded default). Files are written to a temp
  file, fsynced and renamed into place, so a reader never sees half a file; one process owns a
  directory at a time (an flock on ``<dir>/.lock``); the commit log's names are kept in memory
  for fast listing; object metadata lives in a ``<file>.meta`` JSON file beside it.
- `MinioBackend`: a MinIO (or any S3) bucket through the ``minio`` client (segments through
  the lean `S3Putter`). Objects appear atomically on PUT; several replicas may share a bucket.

Both share the object layout and the group-commit protocol of
`mtopt.episode_store.commit.ObjectStoreBackend` (see `mtopt.episode_store.layout` and
docs/storage.md). Usage: see `mtopt.episode_store.backend`.
"""

from __future__ import annotations

import bisect
import fcntl
import http.client
import io
import json
import os
import threading
import uuid
from pathlib import Path

from mtopt.episode_store.backend import EpisodeBackend, EpisodeConflictError, PutResult, StorageUnavailableError
from mtopt.episode_store.commit import ObjectStoreBackend
from mtopt.episode_store.layout import LOG_PREFIX
from mtopt.episode_store.s3put import S3ListError, S3Putter
from mtopt.serving.s3 import make_minio_client

__all__ = [
    "EpisodeBackend", "EpisodeConflictError", "LocalDirBackend", "MinioBackend", "ObjectStoreBackend", "PutResult",
    "StorageUnavailableError",
]

META_SUFFIX = ".meta"
_META_HEADER = "x-amz-meta-"


class LocalDirBackend(ObjectStoreBackend):
    """Episodes under a local directory, with the bucket layout as paths.

    ``fsync`` (default True) makes every acknowledged episode survive a power cut; turn it
    off only for throwaway test runs.
    """

    def __init__(self, root: Path, *, fsync: bool = True, gather_s: float = 0.003, max_writes: int = 4, quiet_s: float = 0.001):
        super().__init__(settle_s=0.0, gather_s=gather_s, max_writes=max_writes, single_writer=True, quiet_s=quiet_s)
        self.root = Path(root)
        self._create_locks = [threading.Lock() for _ in range(64)]
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

    def _meta_path(self, path: Path) -> Path:
        return path.with_name(path.name + META_SUFFIX)

    def _replace(self, path: Path, data: bytes) -> None:
        os.replace(self._write_tmp(data), path)

    def _put(self, key: str, data: bytes, meta: dict[str, str] | None = None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if meta:  # metadata first: a crash in between leaves the old bytes with new metadata
            self._replace(self._meta_path(path), json.dumps(meta).encode())
        self._replace(path, data)
        self._sync_dir(path.parent)
        if key.startswith(LOG_PREFIX):
            with self._lock:
                i = bisect.bisect_left(self._log_keys, key)
                if i == len(self._log_keys) or self._log_keys[i] != key:
                    self._log_keys.insert(i, key)

    def _put_if_absent(self, key: str, data: bytes, meta: dict[str, str] | None = None) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_tmp(data)
        try:
            # One process owns the directory: a lock makes "absent? metadata, then data" one step.
            with self._create_locks[hash(key) % len(self._create_locks)]:
                if meta:
                    if path.exists():
                        return False
                    self._replace(self._meta_path(path), json.dumps(meta).encode())
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

    def _get_range(self, key: str, offset: int, length: int) -> bytes | None:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            return None

    def _read_meta(self, path: Path) -> dict[str, str]:
        try:
            return json.loads(self._meta_path(path).read_bytes())
        except (FileNotFoundError, ValueError):
            return {}

    def _get_with_meta(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        data = self._get(key)
        return None if data is None else (data, self._read_meta(self._path(key)))

    def _head(self, key: str) -> dict[str, str] | None:
        path = self._path(key)
        return self._read_meta(path) if path.is_file() else None

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _has_prefix(self, prefix: str) -> bool:
        for _, _, files in os.walk(self._path(prefix)):
            if files:
                return True
        return False

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
            super().close()
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()


class MinioBackend(ObjectStoreBackend):
    """Episodes in a MinIO/S3 bucket (created on first ping if missing and ``create_bucket``)."""

    def __init__(
        self, endpoint: str, bucket: str, access_key: str, secret_key: str, *, secure: bool = False,
        region: str | None = None, create_bucket: bool = True, settle_s: float = 1.0,
        max_connections: int = 32, timeout_s: float = 30.0, gather_s: float = 0.003, max_writes: int = 4,
        refresh_s: float = 0.25, quiet_s: float = 0.001,
    ):
        super().__init__(settle_s=settle_s, gather_s=gather_s, max_writes=max_writes, refresh_s=refresh_s, quiet_s=quiet_s)
        self.endpoint, self.bucket, self._create_bucket = endpoint, bucket, create_bucket
        self.client, self._http = make_minio_client(
            endpoint, access_key, secret_key, secure=secure, region=region, max_connections=max_connections, timeout_s=timeout_s,
        )
        self._access_key, self._secret_key, self._secure, self._region, self._timeout_s = access_key, secret_key, secure, region, timeout_s
        self._fast: S3Putter | None = None
        self._fast_lock = threading.Lock()
        self._bucket_ok = False

    def _call(self, what: str, fn, *args, **kwargs):
        from minio.error import S3Error

        try:
            return fn(*args, **kwargs)
        except S3Error as e:
            raise StorageUnavailableError(f"S3 {what} on {self.endpoint}/{self.bucket} failed: {e.code}: {e.message}") from e
        except Exception as e:  # urllib3 connection errors and the like
            raise StorageUnavailableError(f"S3 {what} on {self.endpoint}/{self.bucket} failed: {e}") from e

    @staticmethod
    def _meta_headers(meta: dict[str, str] | None) -> dict[str, str]:
        return {_META_HEADER + k: v for k, v in (meta or {}).items()}

    @staticmethod
    def _meta_of(headers) -> dict[str, str]:
        n = len(_META_HEADER)
        return {k.lower()[n:]: v for k, v in headers.items() if k.lower().startswith(_META_HEADER)}

    def _putter(self) -> S3Putter:
        if self._fast is None:
            region = self._region or self._call("region lookup", self.client._get_region, self.bucket)
            with self._fast_lock:
                if self._fast is None:
                    self._fast = S3Putter(self.endpoint, self.bucket, self._access_key, self._secret_key, region=region,
                                          secure=self._secure, timeout_s=self._timeout_s)
        return self._fast

    def _fast_put(self, what: str, key: str, data: bytes, headers: dict[str, str]) -> int:
        try:
            status, code = self._putter().put(key, data, headers)
        except (OSError, http.client.HTTPException) as e:
            raise StorageUnavailableError(f"S3 {what} on {self.endpoint}/{self.bucket} failed: {e}") from e
        if status // 100 != 2 and status != 412:
            raise StorageUnavailableError(f"S3 {what} on {self.endpoint}/{self.bucket} failed: HTTP {status} {code}")
        return status

    def _put(self, key: str, data: bytes, meta: dict[str, str] | None = None) -> None:
        if meta is None:
            self._call("put", self.client.put_object, self.bucket, key, io.BytesIO(data), len(data))
        else:  # the upload path: one lean request (episodes are below the 5 GiB single-PUT limit)
            headers = {"Content-Type": "application/octet-stream", **self._meta_headers(meta)}
            if self._fast_put("put", key, data, headers) == 412:
                raise StorageUnavailableError(f"S3 put on {self.endpoint}/{self.bucket} failed: unexpected 412")

    def _put_if_absent(self, key: str, data: bytes, meta: dict[str, str] | None = None) -> bool:
        from minio.error import S3Error

        if meta is not None:  # the upload path: lean conditional create
            headers = {"If-None-Match": "*", "Content-Type": "application/octet-stream", **self._meta_headers(meta)}
            return self._fast_put("conditional put", key, data, headers) != 412
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
        got = self._get_with_meta(key, with_meta=False)
        return None if got is None else got[0]

    def _get_range(self, key: str, offset: int, length: int) -> bytes | None:
        got = self._get_with_meta(key, with_meta=False, offset=offset, length=length)
        return None if got is None else got[0]

    def _get_with_meta(self, key: str, with_meta: bool = True, offset: int = 0, length: int = 0) -> tuple[bytes, dict[str, str]] | None:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, key, offset=offset, length=length)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise StorageUnavailableError(f"S3 get on {self.endpoint}/{self.bucket} failed: {e.code}: {e.message}") from e
        except Exception as e:
            raise StorageUnavailableError(f"S3 get on {self.endpoint}/{self.bucket} failed: {e}") from e
        try:
            return response.read(), (self._meta_of(response.headers) if with_meta else {})
        except Exception as e:
            raise StorageUnavailableError(f"S3 get on {self.endpoint}/{self.bucket} failed: {e}") from e
        finally:
            response.close()
            response.release_conn()

    def _head(self, key: str) -> dict[str, str] | None:
        from minio.error import S3Error

        try:
            return self._meta_of(self.client.stat_object(self.bucket, key).metadata)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise StorageUnavailableError(f"S3 stat on {self.endpoint}/{self.bucket} failed: {e.code}: {e.message}") from e
        except Exception as e:
            raise StorageUnavailableError(f"S3 stat on {self.endpoint}/{self.bucket} failed: {e}") from e

    def _exists(self, key: str) -> bool:
        return self._head(key) is not None

    def _has_prefix(self, prefix: str) -> bool:
        return self._call("list", lambda: any(True for _ in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)))

    def _list_log(self, start_after: str, limit: int) -> list[str]:
        # One lean request of at most ``limit`` keys (minio-py always asks for 1000 and parses
        # every entry's XML); log names are ASCII without XML-special characters.
        try:
            return self._putter().list_keys(LOG_PREFIX, start_after, max(1, min(limit, 1000)))[:limit]
        except (OSError, http.client.HTTPException, S3ListError) as e:
            raise StorageUnavailableError(f"S3 list on {self.endpoint}/{self.bucket} failed: {e}") from e

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
        super().close()
        if self._fast is not None:
            self._fast.close()
        self._http.clear()
