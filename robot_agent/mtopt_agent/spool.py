"""A durable local spool of finished episodes: written before upload, deleted after the store's ack.

Layout of the spool directory::

    <spool>/.lock                                   held (flock) by the one agent using the spool
    <spool>/000000000042-<episode_id>.episode       a serialized mtopt.v1.Episode, pending upload
    <spool>/.000000000043-<episode_id>.episode.tmp  a write in progress (removed on start)
    <spool>/rejected/000000000017-<id>.episode      refused by the store, kept for inspection
    <spool>/rejected/000000000017-<id>.episode.error.json   why: status code, message, time

Guarantees:

- A spooled episode is complete or absent: it is written to a temporary file, fsynced, renamed
  into place and the directory fsynced, so a crash or power cut never leaves a half file that
  looks pending. `put` returns only after that.
- Order: episodes are uploaded oldest first (the sequence number in the name survives restarts).
- Restart: a new `EpisodeSpool` on the same directory finds every pending episode again.
- Delete only on acknowledgement (`ack`); a refused episode is moved to ``rejected/`` with the
  error (`reject`), never deleted silently.
- Bounded: `full` is true while pending and rejected episodes together take ``max_bytes`` or
  more. The agent then stops collecting until uploads make room (a soft high-water mark: the
  episode in progress is always written, so the spool exceeds the mark by at most one episode).
  Nothing is dropped. Rejected episodes count too, so a store that refuses everything (e.g. a
  task catalogue mismatch) pauses the robot instead of filling its disk; remove or move the
  files in ``rejected/`` (after reading why) and restart the agent to free their space.

Usage::

    spool = EpisodeSpool("/var/lib/mtopt/spool", max_bytes=1 << 30)
    spool.put(episode.episode_id, encode_episode(episode))      # agent
    entry = spool.oldest(timeout=1.0)                           # uploader
    data = spool.read(entry); ...upload...; spool.ack(entry)    # or spool.reject(entry, code, message)
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import re
import threading
import time
from pathlib import Path

from mtopt.episode_codec import ID_PATTERN

log = logging.getLogger(__name__)

SUFFIX = ".episode"
ERROR_SUFFIX = ".error.json"
REJECTED = "rejected"
_NAME = re.compile(r"^(\d{12})-(.+)\.episode$")


class SpoolError(RuntimeError):
    """The spool directory cannot be used (locked by another agent, not writable, ...)."""


@dataclasses.dataclass(frozen=True)
class SpoolEntry:
    """One pending episode file."""

    sequence: int
    episode_id: str
    path: Path
    size_bytes: int

    @property
    def name(self) -> str:
        return self.path.name


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes, fsync: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)


class EpisodeSpool:
    """See the module docstring. Thread-safe: the agent puts, the uploader reads/acks/rejects."""

    def __init__(self, directory: str | Path, max_bytes: int, *, fsync: bool = True):
        if max_bytes <= 0:
            raise ValueError(f"spool max_bytes must be > 0, got {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.fsync = fsync
        self.rejected_dir = self.directory / REJECTED
        try:
            self.rejected_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpoolError(f"cannot create the spool directory {self.directory}: {e}; set MTOPT_AGENT_SPOOL_DIR to a writable directory") from e
        self._lock_file = open(self.directory / ".lock", "a+")
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise SpoolError(
                f"spool {self.directory} is in use by another agent process; give every agent its own MTOPT_AGENT_SPOOL_DIR"
            ) from None
        self._cond = threading.Condition()
        self._pending: dict[str, SpoolEntry] = {}
        self._bytes = 0
        self._rejected = 0
        self._rejected_bytes = 0
        self._next_sequence = 1
        self._recover()

    # -- start-up ----------------------------------------------------------------------------
    def _recover(self) -> None:
        """Removes unfinished writes and indexes pending and rejected episodes."""
        max_seq = 0
        for p in self.directory.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                log.warning("removing unfinished spool write %s (the agent stopped while writing it)", p.name)
                p.unlink(missing_ok=True)
                continue
            m = _NAME.match(p.name)
            if m and p.is_file():
                entry = SpoolEntry(int(m.group(1)), m.group(2), p, p.stat().st_size)
                self._pending[p.name] = entry
                self._bytes += entry.size_bytes
                max_seq = max(max_seq, entry.sequence)
        for p in self.rejected_dir.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)
                continue
            m = _NAME.match(p.name)
            if m:
                self._rejected += 1
                self._rejected_bytes += p.stat().st_size
                max_seq = max(max_seq, int(m.group(1)))
        self._pending = dict(sorted(self._pending.items()))  # names sort by sequence
        self._next_sequence = max_seq + 1
        if self._pending:
            log.info("spool %s: %d episodes (%d bytes) pending upload from before the restart",
                     self.directory, len(self._pending), self._bytes)

    # -- agent side --------------------------------------------------------------------------
    def put(self, episode_id: str, data: bytes) -> SpoolEntry:
        """Writes one serialized episode durably; returns once it is safely on disk.

        Raises ValueError for an episode id that cannot be a file name, OSError when the disk
        refuses the write (nothing is left behind then).
        """
        if not ID_PATTERN.match(episode_id):
            raise ValueError(f"episode id {episode_id!r} is invalid: use 1-128 characters from [A-Za-z0-9._-]")
        with self._cond:
            sequence = self._next_sequence
            self._next_sequence += 1
        path = self.directory / f"{sequence:012d}-{episode_id}{SUFFIX}"
        _write_atomically(path, data, self.fsync)
        entry = SpoolEntry(sequence, episode_id, path, len(data))
        with self._cond:
            last = next(reversed(self._pending), None)
            self._pending[path.name] = entry
            if last is not None and last > path.name:  # a concurrent put finished first: keep the order
                self._pending = dict(sorted(self._pending.items()))
            self._bytes += entry.size_bytes
            self._cond.notify_all()
        return entry

    def _full(self) -> bool:
        return self._bytes + self._rejected_bytes >= self.max_bytes

    @property
    def full(self) -> bool:
        """True while pending and rejected episodes take max_bytes or more (collection should pause)."""
        with self._cond:
            return self._full()

    def wait_until_not_full(self, timeout: float | None = None, stop: threading.Event | None = None) -> bool:
        """Blocks until the spool has room (True), or ``timeout`` passes or ``stop`` is set
        (False; call `wake` after setting it)."""
        stopped = (lambda: False) if stop is None else stop.is_set
        with self._cond:
            self._cond.wait_for(lambda: not self._full() or stopped(), timeout)
            return not self._full() and not stopped()

    # -- uploader side -----------------------------------------------------------------------
    def pending(self) -> list[SpoolEntry]:
        """Pending episodes, oldest first."""
        with self._cond:
            return list(self._pending.values())

    def oldest(self, timeout: float | None = None, stop: threading.Event | None = None) -> SpoolEntry | None:
        """The oldest pending episode, waiting up to ``timeout`` for one; None if there is none
        (or ``stop`` is set; call `wake` after setting it)."""
        stopped = (lambda: False) if stop is None else stop.is_set
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._pending) or stopped(), timeout) or stopped():
                return None
            return next(iter(self._pending.values()))

    def read(self, entry: SpoolEntry) -> bytes:
        return entry.path.read_bytes()

    def ack(self, entry: SpoolEntry) -> None:
        """The store acknowledged the episode: delete it. Idempotent."""
        with self._cond:
            if self._pending.pop(entry.name, None) is None:
                return
            self._bytes -= entry.size_bytes
        entry.path.unlink(missing_ok=True)
        with self._cond:
            self._cond.notify_all()

    def reject(self, entry: SpoolEntry, code: str, message: str) -> Path:
        """Moves a refused episode to rejected/ next to an .error.json that says why; returns its new path."""
        target = self.rejected_dir / entry.name
        error = {"episode_id": entry.episode_id, "code": code, "message": message, "time": time.time(),
                 "size_bytes": entry.size_bytes}
        _write_atomically(target.with_name(target.name + ERROR_SUFFIX), json.dumps(error, indent=1).encode(), self.fsync)
        os.replace(entry.path, target)
        if self.fsync:
            _fsync_dir(self.rejected_dir)
            _fsync_dir(self.directory)
        with self._cond:
            if self._pending.pop(entry.name, None) is not None:
                self._bytes -= entry.size_bytes
            self._rejected += 1
            self._rejected_bytes += entry.size_bytes
            self._cond.notify_all()
        log.error("episode %s rejected by the store (%s): %s; kept in %s", entry.episode_id, code, message, target)
        return target

    def rejected(self) -> list[tuple[Path, dict]]:
        """Rejected episodes with their error records, oldest first."""
        out = []
        for p in sorted(self.rejected_dir.glob(f"*{SUFFIX}")):
            err = p.with_name(p.name + ERROR_SUFFIX)
            out.append((p, json.loads(err.read_text()) if err.is_file() else {}))
        return out

    def wait_until_empty(self, timeout: float | None = None) -> bool:
        """Blocks until nothing is pending (True) or ``timeout`` passes (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def wake(self) -> None:
        """Wakes every waiter (e.g. to let an uploader notice it should stop)."""
        with self._cond:
            self._cond.notify_all()

    # -- state -------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._pending)

    @property
    def nbytes(self) -> int:
        with self._cond:
            return self._bytes

    @property
    def rejected_count(self) -> int:
        with self._cond:
            return self._rejected

    @property
    def rejected_bytes(self) -> int:
        with self._cond:
            return self._rejected_bytes

    def close(self) -> None:
        """Releases the directory lock. Idempotent."""
        if not self._lock_file.closed:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
