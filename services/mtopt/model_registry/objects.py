"""The object store the registry writes to, behind one small interface, `ObjectStore`.

Both implementations reuse episode_store's storage backends for what they already do well
(atomic writes, create-only-if-absent, the directory lock, the MinIO client and bucket setup)
and add what the registry needs besides: ranged reads (resumable artifact downloads) and
listing under a prefix.

- `LocalDirObjects`: a local directory (the embedded default); one process owns it (flock), so
  nobody else writes and the registry need not poll for changes (``shared`` is False).
- `MinioObjects`: a MinIO/S3 bucket; several registry replicas may write it (``shared``).

Usage (blocking calls: the server runs them in a thread pool)::

    objects = LocalDirObjects(Path("data/models"))          # or MinioObjects(...)
    objects.put("models/q/versions/0000000001/manifest.json", data)
    created = objects.put_if_absent(key, data)               # False if the key existed
    data = objects.get(key)                                  # None if absent
    part = objects.get_range(key, offset=0, length=1 << 20)
    keys = objects.list_keys("models/q/log/", start_after="", limit=1000)
    objects.close()
"""

from __future__ import annotations

import abc
import os
from pathlib import Path

from mtopt.episode_store.storage import LocalDirBackend, MinioBackend, StorageUnavailableError


class ObjectStore(abc.ABC):
    """Keys -> bytes with atomic writes. All methods block; implementations are thread-safe."""

    shared: bool = False
    """Whether other processes may write the same objects (then the registry polls)."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Writes an object atomically (readers see all of it or nothing)."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Creates an object only if none exists; False if one did (atomic across writers)."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """An object's bytes, or None if it does not exist."""

    @abc.abstractmethod
    def get_range(self, key: str, offset: int, length: int) -> bytes | None:
        """Up to ``length`` bytes from ``offset``, or None if the object does not exist."""

    @abc.abstractmethod
    def list_keys(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]:
        """Keys directly under ``prefix`` (a folder ending in "/") after ``start_after``, sorted."""

    @abc.abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the sub-folders directly under ``prefix``, sorted."""

    @abc.abstractmethod
    def uri(self, key: str) -> str:
        """Where an object lives, for humans (s3://bucket/key, file:///path)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Returns if the storage answers; StorageUnavailableError otherwise."""

    def close(self) -> None:
        """Releases connections and locks. Idempotent."""


class LocalDirObjects(ObjectStore):
    """Objects as files under a directory (temp file + fsync + rename; link(2) for create-only)."""

    shared = False

    def __init__(self, root: Path, *, fsync: bool = True):
        self.root = Path(root).absolute()
        try:
            self._files = LocalDirBackend(self.root, fsync=fsync)
        except StorageUnavailableError as e:
            if "in use by another" in str(e):
                raise StorageUnavailableError(
                    f"model directory {self.root} is in use by another model_registry; give each registry its own "
                    "directory (or use the s3 backend for several replicas)"
                ) from None
            raise StorageUnavailableError(f"cannot use model directory {self.root}: {e.__cause__ or e}; set a writable directory") from e

    def put(self, key: str, data: bytes) -> None:
        self._files.put_object(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._files.put_object_if_absent(key, data)

    def get(self, key: str) -> bytes | None:
        return self._files.get_object(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes | None:
        try:
            with open(self.root / key, "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            return None

    def list_keys(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]:
        try:
            names = sorted(e.name for e in os.scandir(self.root / prefix) if e.is_file())
        except (FileNotFoundError, NotADirectoryError):
            return []
        keys = [prefix + n for n in names]
        if start_after:
            keys = [k for k in keys if k > start_after]
        return keys[:limit]

    def list_dirs(self, prefix: str) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.root / prefix) if e.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def uri(self, key: str) -> str:
        return (self.root / key).as_uri()

    def ping(self) -> None:
        try:
            self._files.ping()
        except StorageUnavailableError as e:
            raise StorageUnavailableError(str(e).replace("episode directory", "model directory")) from None

    def close(self) -> None:
        self._files.close()


class MinioObjects(ObjectStore):
    """Objects in a MinIO/S3 bucket (created on first ping if missing and ``create_bucket``)."""

    shared = True

    def __init__(
        self, endpoint: str, bucket: str, access_key: str, secret_key: str, *, secure: bool = False,
        region: str | None = None, create_bucket: bool = True, max_connections: int = 32, timeout_s: float = 30.0,
    ):
        self._s3 = MinioBackend(
            endpoint, bucket, access_key, secret_key, secure=secure, region=region, create_bucket=create_bucket,
            settle_s=0.0, max_connections=max_connections, timeout_s=timeout_s,
        )
        self.client, self.bucket, self.endpoint = self._s3.client, bucket, endpoint

    def _fail(self, what: str, e: Exception) -> StorageUnavailableError:
        detail = f"{e.code}: {e.message}" if hasattr(e, "code") and hasattr(e, "message") else str(e)
        return StorageUnavailableError(f"S3 {what} on {self.endpoint}/{self.bucket} failed: {detail}")

    def put(self, key: str, data: bytes) -> None:
        self._s3.put_object(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._s3.put_object_if_absent(key, data)

    def get(self, key: str) -> bytes | None:
        return self._s3.get_object(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes | None:
        from minio.error import S3Error

        if length <= 0:
            return b"" if self._s3.object_exists(key) else None
        try:
            response = self.client.get_object(self.bucket, key, offset=offset, length=length)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise self._fail("ranged get", e) from e
        except Exception as e:
            raise self._fail("ranged get", e) from e
        try:
            return response.read()
        except Exception as e:
            raise self._fail("ranged get", e) from e
        finally:
            response.close()
            response.release_conn()

    def list_keys(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]:
        try:
            out = []
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=False, start_after=start_after or None):
                if not obj.is_dir:
                    out.append(obj.object_name)
                    if len(out) >= limit:
                        break
            return out
        except Exception as e:
            raise self._fail("list", e) from e

    def list_dirs(self, prefix: str) -> list[str]:
        try:
            return sorted(obj.object_name[len(prefix):].rstrip("/")
                          for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=False) if obj.is_dir)
        except Exception as e:
            raise self._fail("list", e) from e

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def ping(self) -> None:
        self._s3.ping()

    def close(self) -> None:
        self._s3.close()
