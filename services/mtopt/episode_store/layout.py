"""Where episode_store keeps things, and the records it keeps about each episode.

The same layout is used in a MinIO/S3 bucket and under a local directory (see docs/storage.md)::

    episodes/date=YYYY-MM-DD/robot=<robot_id>/<episode_id>.pb
        The serialized mtopt.v1.Episode, exactly the bytes the robot uploaded (their SHA-256
        is in the index). date is the UTC date of the episode's end_time (else its start_time,
        else the time it was stored).
    index/by-id/<hh>/<episode_id>.json
        The episode's `EpisodeRecord` as JSON; <hh> is the first two hex digits of
        sha256(episode_id), to spread files over directories. Written after the data object,
        with "create only if absent", so it decides which upload of an id wins. GetEpisode and
        the idempotency check read it.
    index/log/date=YYYY-MM-DD/<stored_ns>+<end_ns>+<robot>+<task>+<episode_id>
        The commit log: one entry per stored episode (the same JSON record), written last.
        date is the UTC date of stored_ns; stored_ns and end_ns are 20-digit nanoseconds since
        the epoch; robot, task and id are percent-encoded. Keys sort in commit order, so
        ListEpisodes and WatchEpisodes page through it with "list keys after K", and filter by
        robot, task and end time on the key alone. A watch cursor is the key without the
        "index/log/" prefix (no file extension, so keys and cursors sort alike).

Visibility: an upload writes the data object, then index/by-id, then index/log. Nothing is
read, listed or watched before its index/log entry exists, and that is written only after the
data object is complete and verified, so a half upload is never visible. A crash between the
by-id and log writes leaves a by-id record without a log entry: invisible, but it still makes
the id's re-upload idempotent; the robot, never acknowledged, uploads again and the store then
writes the missing log entry (at a new position, so no watcher misses it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from typing import Mapping
from urllib.parse import quote, unquote

EPISODES_PREFIX = "episodes/"
BY_ID_PREFIX = "index/by-id/"
LOG_PREFIX = "index/log/"
_LOG_NAME = re.compile(r"^date=(\d{4}-\d{2}-\d{2})/(\d{20})\+(\d{20})\+([^+/]*)\+([^+/]*)\+([^+/]+)$")


def _date(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc).strftime("%Y-%m-%d")


def data_key(episode_id: str, robot_id: str, date_ns: int) -> str:
    """episodes/date=YYYY-MM-DD/robot=<robot_id>/<episode_id>.pb (ids are already safe names)."""
    return f"{EPISODES_PREFIX}date={_date(date_ns)}/robot={robot_id}/{episode_id}.pb"


def by_id_key(episode_id: str) -> str:
    h = hashlib.sha256(episode_id.encode()).hexdigest()[:2]
    return f"{BY_ID_PREFIX}{h}/{episode_id}.json"


@dataclasses.dataclass(frozen=True)
class LogName:
    """The fields encoded in a commit-log entry's name (what lists filter on without a read)."""

    stored_ns: int
    end_ns: int
    robot_id: str
    task: str
    episode_id: str

    @property
    def cursor(self) -> str:
        """The entry's name: date=.../<stored_ns>+<end_ns>+<robot>+<task>+<id> (sorts in commit order)."""
        parts = "+".join(quote(s, safe="") for s in (self.robot_id, self.task, self.episode_id))
        return f"date={_date(self.stored_ns)}/{self.stored_ns:020d}+{self.end_ns:020d}+{parts}"

    @property
    def key(self) -> str:
        return f"{LOG_PREFIX}{self.cursor}"

    @classmethod
    def parse_cursor(cls, cursor: str) -> "LogName":
        """Inverse of `cursor`; ValueError on anything else."""
        m = _LOG_NAME.match(cursor)
        if not m:
            raise ValueError(f"not an episode_store cursor: {cursor[:200]!r}")
        return cls(int(m[2]), int(m[3]), unquote(m[4]), unquote(m[5]), unquote(m[6]))

    @classmethod
    def parse_key(cls, key: str) -> "LogName":
        if not key.startswith(LOG_PREFIX):
            raise ValueError(f"not a commit-log key: {key!r}")
        return cls.parse_cursor(key[len(LOG_PREFIX) :])


@dataclasses.dataclass(frozen=True)
class NewEpisode:
    """What the store learns from a verified upload, before it commits it."""

    episode_id: str
    robot_id: str
    task: str
    sha256: str
    size_bytes: int
    policy_version: int = 0
    policy_name: str = ""
    num_steps: int = 0
    start_ns: int = 0
    end_ns: int = 0
    terminated_by_policy: bool = False
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def date_ns(self, fallback_ns: int) -> int:
        return self.end_ns or self.start_ns or fallback_ns


@dataclasses.dataclass(frozen=True)
class EpisodeRecord(NewEpisode):
    """A committed episode: its summary, where its bytes are, and its place in the commit log."""

    stored_ns: int = 0
    storage_key: str = ""

    @property
    def log_name(self) -> LogName:
        return LogName(self.stored_ns, self.end_ns, self.robot_id, self.task, self.episode_id)

    @property
    def cursor(self) -> str:
        return self.log_name.cursor

    def to_json(self) -> bytes:
        d = dataclasses.asdict(self)
        d["metadata"] = dict(self.metadata)
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "EpisodeRecord":
        d = json.loads(data)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def position_cursor(ns: int) -> str:
    """A cursor for "everything stored at or before ns": it sorts after every log name with
    stored_ns <= ns and before every later one. Watches use it for "now" and to resume."""
    return f"date={_date(ns)}/{ns:020d}+{'9' * 20}+~+~+~"
