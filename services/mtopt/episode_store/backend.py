"""The storage interface of episode_store, `EpisodeBackend`, and its errors.

Implementations: `mtopt.episode_store.storage.LocalDirBackend` and `MinioBackend`, both built on
the group-commit protocol of `mtopt.episode_store.commit.ObjectStoreBackend`.

Usage (blocking calls: the server runs them in a thread pool)::

    backend = LocalDirBackend(Path("/data/episodes"))     # or MinioBackend(...)
    result = backend.put(new_episode, data)               # PutResult(record, already_existed)
    record, data = backend.fetch(episode_id)              # or None
    records, last, reached_end = backend.scan_log(after_cursor, limit=100)
    backend.close()
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
from concurrent.futures import Future
from typing import Callable

from mtopt.episode_store.layout import EpisodeRecord, LogName, NewEpisode


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

    settle_s: float = 0.0
    """How long a commit may take to appear in the log after its stored time (0: one writer)."""

    @abc.abstractmethod
    def put(self, new: NewEpisode, data: bytes) -> PutResult:
        """Stores a verified episode and commits it to the log; idempotent on episode_id.

        Returns once the commit is durable. Same id and same sha256 as a stored episode:
        nothing new is listed and ``already_existed`` is True. Same id, other sha256:
        EpisodeConflictError.
        """

    def submit(self, new: NewEpisode, data: bytes) -> Future:
        """`put` that may return before the write is durable: a Future of the PutResult (this
        default waits; `ObjectStoreBackend` returns while the group commit runs)."""
        future: Future = Future()
        future.set_result(self.put(new, data))
        return future

    def submit_nowait(self, new: NewEpisode, data: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future | None:
        """`submit` from an event loop's thread when that needs neither I/O nor a wait: an
        asyncio future (of ``loop``) of the PutResult; None when it would (call `submit` from a
        thread then). This default always answers None."""
        return None

    @abc.abstractmethod
    def get(self, episode_id: str) -> EpisodeRecord | None:
        """The record of a committed (listed) episode, or None."""

    @abc.abstractmethod
    def read(self, record: EpisodeRecord) -> bytes:
        """The stored bytes of an episode (StorageUnavailableError if they are gone)."""

    def fetch(self, episode_id: str) -> tuple[EpisodeRecord, bytes] | None:
        """(record, bytes) of a committed episode, or None."""
        record = self.get(episode_id)
        return None if record is None else (record, self.read(record))

    @abc.abstractmethod
    def scan_log(
        self, after: str, limit: int, match: Callable[[LogName], bool] | None = None,
        max_scan: int = 10_000, max_stored_ns: int | None = None,
    ) -> tuple[list[EpisodeRecord], str, bool]:
        """Commit-log records after cursor ``after`` ("" = from the start), oldest first.

        Scans at most ``max_scan`` records, stopping after ``limit`` matches or at the first
        entry stored after ``max_stored_ns``. Returns (matching records, cursor of the last
        record scanned, whether the end of the log -- or of ``max_stored_ns`` -- was reached).
        """

    @abc.abstractmethod
    def horizon_ns(self) -> int:
        """Every commit with stored_ns <= this is already in the log (none can appear below it)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Returns if the storage answers; StorageUnavailableError otherwise."""

    def close(self) -> None:
        """Releases connections and locks. Idempotent."""
