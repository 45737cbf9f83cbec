"""Where episode_store keeps things, and the records it keeps about each episode.

The same layout is used in a MinIO/S3 bucket and under a local directory (see docs/storage.md)::

    index/log/date=YYYY-MM-DD/<stored_ns>+0+<writer>
        The commit log, one object per *segment* (group commit, layout v3): the records of the
        episodes committed together, then their bytes, exactly what the robots uploaded
        (`encode_segment`). date is the UTC date of stored_ns (20 digits, nanoseconds since the
        epoch); writer is the hex id of the store process that wrote it. Names sort in commit
        order, so ListEpisodes and WatchEpisodes page through the log with "list names after K"
        and read one header per segment. The cursor of the i-th record of a segment is
        ``<name>/<i:05d>`` (it sorts after its segment, before the next one).

Visibility: an upload is acknowledged once the segment that holds it is written, and an
episode is listed, watched and readable exactly when a written segment holds it, so a half
upload is never visible. The id index (`mtopt.episode_store.log_reader`) is built from the log.

Older layouts are still read, never written. Layout v2: the same log names, each a JSON batch
of records, and every episode's bytes in ``episodes/by-id/<hh>/<episode_id>.pb`` (<hh>: the
first two hex digits of sha256(episode_id)); a record's ``storage_key`` says where. Layout v1:
``episodes/date=.../robot=.../<id>.pb`` data, ``index/by-id/<hh>/<id>.json`` records and one
``index/log/date=.../<stored_ns>+<end_ns>+<robot>+<task>+<episode_id>`` entry per episode
(`LogName`). All three share one key order, and cursors of every layout stay valid.
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
DATA_PREFIX = "episodes/by-id/"  # layout v2 only (read, never written)
BY_ID_PREFIX = "index/by-id/"  # layout v1 only (read, never written)
LOG_PREFIX = "index/log/"
SEGMENT_MAGIC = b"MTSEG3\r\n"  # starts a layout v3 segment (a v2 batch starts with "{")
SEGMENT_PREFIX_BYTES = len(SEGMENT_MAGIC) + 4  # magic + the header's length
_BATCH_NAME = re.compile(r"^date=(\d{4}-\d{2}-\d{2})/(\d{20})\+0\+([0-9a-f]{1,32})$")
_BATCH_RECORD = re.compile(r"^(date=\d{4}-\d{2}-\d{2}/\d{20}\+0\+[0-9a-f]{1,32})/(\d{5})$")
_LOG_NAME = re.compile(r"^date=(\d{4}-\d{2}-\d{2})/(\d{20})\+(\d{20})\+([^+/]*)\+([^+/]*)\+([^+/]+)$")


def _date(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc).strftime("%Y-%m-%d")


def _spread(episode_id: str) -> str:
    return hashlib.sha256(episode_id.encode()).hexdigest()[:2]


def data_key(episode_id: str) -> str:
    """Layout v2's data object of an episode: episodes/by-id/<hh>/<episode_id>.pb."""
    return f"{DATA_PREFIX}{_spread(episode_id)}/{episode_id}.pb"


def by_id_key(episode_id: str) -> str:
    """Layout v1's per-episode record (read only, for data stored before group commit)."""
    return f"{BY_ID_PREFIX}{_spread(episode_id)}/{episode_id}.json"


def batch_name(stored_ns: int, writer: str) -> str:
    """date=YYYY-MM-DD/<stored_ns>+0+<writer>: a commit-log batch (sorts before position_cursor(stored_ns))."""
    return f"date={_date(stored_ns)}/{stored_ns:020d}+0+{writer}"


def parse_batch_name(name: str) -> tuple[int, str] | None:
    """(stored_ns, writer) of a batch name; None if ``name`` is not one."""
    m = _BATCH_NAME.match(name)
    return (int(m[2]), m[3]) if m else None


def record_cursor(batch: str, index: int) -> str:
    return f"{batch}/{index:05d}"


def parse_record_cursor(cursor: str) -> tuple[str, int] | None:
    """(batch name, index) of a batch record's cursor; None if ``cursor`` is not one."""
    m = _BATCH_RECORD.match(cursor)
    return (m[1], int(m[2])) if m else None


def check_cursor(cursor: str) -> None:
    """ValueError unless ``cursor`` is a position of this store's log (any layout)."""
    if parse_record_cursor(cursor) is None and parse_batch_name(cursor) is None:
        LogName.parse_cursor(cursor)


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
    log_position: str = ""
    """Cursor of this record in its commit-log batch (empty for a layout v1 log entry)."""
    data_offset: int = 0
    """Where the episode's bytes start in the ``storage_key`` object; 0: the whole object is
    the episode (layouts v1 and v2). Layout v3 keeps them in the commit-log segment."""

    @property
    def log_name(self) -> LogName:
        """The fields list filters match on (a layout v1 log entry's name)."""
        return LogName(self.stored_ns, self.end_ns, self.robot_id, self.task, self.episode_id)

    @property
    def cursor(self) -> str:
        return self.log_position or self.log_name.cursor

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


def encode_segment(entries: list[tuple[NewEpisode, bytes]]) -> bytes:
    """A layout v3 commit-log segment: SEGMENT_MAGIC, the header's length (4 bytes, big
    endian), the header JSON {"v": 3, "records": [NewEpisode fields + offset, ...]}, then every
    episode's bytes in record order; ``offset`` counts from the end of the header."""
    records, offset = [], 0
    for new, data in entries:
        if len(data) != new.size_bytes:
            raise ValueError(f"episode {new.episode_id}: {len(data)} bytes, its record says {new.size_bytes}")
        d = dataclasses.asdict(new)
        d["metadata"] = dict(new.metadata)
        d["offset"] = offset
        offset += len(data)
        records.append(d)
    header = json.dumps({"v": 3, "records": records}, sort_keys=True, separators=(",", ":")).encode()
    return b"".join([SEGMENT_MAGIC, len(header).to_bytes(4, "big"), header, *(data for _, data in entries)])


def segment_header_length(prefix: bytes) -> int | None:
    """The header length of a v3 segment from its first SEGMENT_PREFIX_BYTES bytes; None if
    ``prefix`` does not start a segment (a layout v2 batch is JSON)."""
    if len(prefix) < SEGMENT_PREFIX_BYTES or not prefix.startswith(SEGMENT_MAGIC):
        return None
    return int.from_bytes(prefix[len(SEGMENT_MAGIC) : SEGMENT_PREFIX_BYTES], "big")


def decode_batch(name: str, body: bytes) -> list[EpisodeRecord]:
    """The records of batch ``name`` in commit order, with their stored time and cursors.

    ``body``: a v2 batch (JSON) or at least the header of a v3 segment."""
    parsed = parse_batch_name(name)
    if parsed is None:
        raise ValueError(f"not a commit-log batch name: {name!r}")
    header_len = segment_header_length(body[:SEGMENT_PREFIX_BYTES])
    if header_len is not None:
        header = body[SEGMENT_PREFIX_BYTES : SEGMENT_PREFIX_BYTES + header_len]
        if len(header) < header_len:
            raise ValueError(f"segment {name}: {len(header)} of its {header_len} header bytes given")
    else:
        header = body
    names = {f.name for f in dataclasses.fields(EpisodeRecord)}
    out = []
    for i, d in enumerate(json.loads(header)["records"]):
        fields = {k: v for k, v in d.items() if k in names}
        fields.update(stored_ns=parsed[0], log_position=record_cursor(name, i))
        if header_len is not None:
            fields.update(storage_key=LOG_PREFIX + name, data_offset=SEGMENT_PREFIX_BYTES + header_len + d["offset"])
        out.append(EpisodeRecord(**fields))
    return out
