"""Reading episode_store's commit log, and the id index (`LogReader`, a mixin of `ObjectStoreBackend`).

Commit-log batches are immutable once written, so their records are cached by name; of a
layout v3 segment only the header is read for that (one ranged read), and an episode's bytes
with a second ranged read when someone asks for them.

The **id index** maps every committed episode id to its first position in the log: GetEpisode
and the idempotency check of uploads look ids up there, without a request. It is built from
the whole log when the store starts (`load_index`, before health turns SERVING), kept current
by this process's own commits, and, when other replicas write the same bucket, by listing the
log's new names (`refresh_index`). It costs ~0.2 KB of memory per stored episode.

Older layouts: v2 batches (JSON records, each episode in its own ``episodes/by-id/`` object)
are read and indexed like segments. Layout v1 (one log entry and one by-id record per
episode) is read too: its log entries share the batches' key order, and GetEpisode and uploads
fall back to its by-id records when the storage has any.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from mtopt.episode_store.backend import StorageUnavailableError
from mtopt.episode_store.layout import (
    BY_ID_PREFIX,
    LOG_PREFIX,
    SEGMENT_PREFIX_BYTES,
    EpisodeRecord,
    LogName,
    by_id_key,
    decode_batch,
    parse_batch_name,
    parse_record_cursor,
    segment_header_length,
)

HEADER_READ_BYTES = 16 << 10  # first read of a segment: its header, usually whole


class LogReader:
    """get, fetch, read, scan_log and the id index over the primitives of `ObjectStoreBackend`."""

    CACHE_BATCHES = 4096
    LOAD_THREADS = 8

    def _init_reader(self, single_writer: bool, refresh_s: float) -> None:
        self._cache: collections.OrderedDict[str, dict[str, EpisodeRecord]] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self._legacy: bool | None = None
        self.single_writer = single_writer
        self.refresh_s = refresh_s
        self._ids: dict[str, tuple[str, int]] = {}  # episode id -> (batch name, index): its first position
        self._index_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._loaded = False
        self._refresh_lock = threading.Lock()
        self._refreshed_at = 0.0
        self._indexed_after = ""  # every batch up to this log key is indexed, and none can appear below it
        self._recent: set[str] = set()  # batches after _indexed_after already indexed

    # -- batches -------------------------------------------------------------------------------
    def _remember(self, name: str, records: dict[str, EpisodeRecord]) -> None:
        with self._cache_lock:
            self._cache[name] = records
            self._cache.move_to_end(name)
            while len(self._cache) > self.CACHE_BATCHES:
                self._cache.popitem(last=False)

    def _batch_records(self, name: str) -> dict[str, EpisodeRecord] | None:
        """The records of a written batch by id, in commit order; None if it is not written."""
        with self._cache_lock:
            hit = self._cache.get(name)
            if hit is not None:
                self._cache.move_to_end(name)
                return hit
        key = LOG_PREFIX + name
        head = self._get_range(key, 0, HEADER_READ_BYTES)
        if head is None:
            return None
        header_len = segment_header_length(head)
        if header_len is None:  # layout v2: the whole object is JSON
            body = head if len(head) < HEADER_READ_BYTES else self._get(key)
        elif SEGMENT_PREFIX_BYTES + header_len > len(head):
            rest = self._get_range(key, len(head), SEGMENT_PREFIX_BYTES + header_len - len(head))
            body = None if rest is None else head + rest
        else:
            body = head
        if body is None:
            return None
        records = {r.episode_id: r for r in decode_batch(name, body)}
        self._remember(name, records)
        return records

    def read(self, record: EpisodeRecord) -> bytes:
        if record.data_offset:
            data = self._get_range(record.storage_key, record.data_offset, record.size_bytes)
            if data is not None and len(data) != record.size_bytes:
                raise StorageUnavailableError(f"episode {record.episode_id}: segment {record.storage_key} is shorter than its header says")
        else:
            data = self._get(record.storage_key)
        if data is None:
            raise StorageUnavailableError(f"episode {record.episode_id}: object {record.storage_key} is missing")
        return data

    # -- the id index ---------------------------------------------------------------------------
    def index_batch(self, name: str, records: Iterable[EpisodeRecord]) -> None:
        """Adds a written batch's ids (an id keeps its first position in log order)."""
        with self._index_lock:
            for i, r in enumerate(records):
                pos = self._ids.get(r.episode_id)
                if pos is None or (name, i) < pos:
                    self._ids[r.episode_id] = (name, i)

    def indexed(self, episode_id: str) -> bool:
        return episode_id in self._ids

    @property
    def indexed_episodes(self) -> int:
        return len(self._ids)

    def _is_first(self, name: str, index: int, record: EpisodeRecord) -> bool:
        """Whether this record is its id's first position (later ones are duplicates: skipped)."""
        pos = self._ids.get(record.episode_id)
        if pos is None or (name, index) < pos:
            with self._index_lock:
                pos = self._ids.get(record.episode_id)
                if pos is None or (name, index) < pos:
                    self._ids[record.episode_id] = pos = (name, index)
        return pos == (name, index)

    def load_index(self) -> None:
        """Indexes the whole log once (the first call; later calls return at once)."""
        if self._loaded:
            return
        with self._load_lock:
            if self._loaded:
                return
            started_ns = time.time_ns()
            names = self._batch_names_after("")
            with ThreadPoolExecutor(self.LOAD_THREADS, thread_name_prefix="episode-store-index") as pool:
                batches = list(pool.map(self._batch_records, names))
            for name, records in zip(names, batches):
                if records is not None:
                    self.index_batch(name, records.values())
            self._advance(names, started_ns)
            self._refreshed_at = time.monotonic()
            self._loaded = True

    def _batch_names_after(self, after: str) -> list[str]:
        """Names of every commit-log batch after log key ``after``, in key order."""
        names = []
        while True:
            keys = list(self._list_log(after, 1000))
            if not keys:
                return names
            after = keys[-1]
            names.extend(k[len(LOG_PREFIX) :] for k in keys if parse_batch_name(k[len(LOG_PREFIX) :]) is not None)

    def _advance(self, names: list[str], started_ns: int) -> None:
        """Moves _indexed_after past the listed batches that no later commit can precede."""
        cutoff = started_ns - int(self.settle_s * 1e9)
        for name in names:
            parsed = parse_batch_name(name)
            if parsed is not None and parsed[0] <= cutoff:
                self._indexed_after = max(self._indexed_after, LOG_PREFIX + name)
            else:
                self._recent.add(name)
        self._recent = {n for n in self._recent if LOG_PREFIX + n > self._indexed_after}

    def refresh_index(self, max_age_s: float = 0.0) -> None:
        """Indexes the batches other replicas wrote since the last refresh, unless that was
        less than ``max_age_s`` ago (a single writer indexes its own commits: no-op)."""
        if self.single_writer or not self._loaded or time.monotonic() - self._refreshed_at < max_age_s:
            return
        with self._refresh_lock:
            if time.monotonic() - self._refreshed_at < max_age_s:
                return
            started, started_ns = time.monotonic(), time.time_ns()
            names = self._batch_names_after(self._indexed_after)
            for name in names:
                if name not in self._recent:
                    records = self._batch_records(name)
                    if records is not None:
                        self.index_batch(name, records.values())
            self._advance(names, started_ns)
            self._refreshed_at = started

    def lookup(self, episode_id: str) -> EpisodeRecord | None:
        """The record of a committed id (layouts v2 and v3), from the index; None if unknown."""
        pos = self._ids.get(episode_id)
        if pos is None:
            return None
        records = self._batch_records(pos[0])
        record = None if records is None else records.get(episode_id)
        if record is None:
            raise StorageUnavailableError(f"episode {episode_id}: its commit-log batch {pos[0]} cannot be read")
        return record

    # -- get -------------------------------------------------------------------------------------
    def get(self, episode_id: str) -> EpisodeRecord | None:
        self.load_index()
        record = self.lookup(episode_id)
        if record is None and not self.single_writer:  # maybe just committed by another replica
            self.refresh_index(max_age_s=self.refresh_s)
            record = self.lookup(episode_id)
        if record is None and self._legacy_layout():
            record = self._legacy_record(episode_id)
        return record

    def fetch(self, episode_id: str) -> tuple[EpisodeRecord, bytes] | None:
        record = self.get(episode_id)
        return None if record is None else (record, self.read(record))

    def _legacy_layout(self) -> bool:
        """Whether the storage holds layout v1 records (checked once; v1 is never written)."""
        if self._legacy is None:
            self._legacy = self._has_prefix(BY_ID_PREFIX)
        return self._legacy

    def _legacy_record(self, episode_id: str) -> EpisodeRecord | None:
        body = self._get(by_id_key(episode_id))
        if body is None:
            return None
        record = EpisodeRecord.from_json(body)
        return record if self._exists(record.log_name.key) else None

    # -- scan --------------------------------------------------------------------------------------
    def scan_log(self, after, limit, match=None, max_scan=10_000, max_stored_ns=None):
        self.load_index()
        if max_stored_ns is not None:  # a watch: every commit up to max_stored_ns must be indexed first
            self.refresh_index(max_age_s=self.settle_s / 4)
        matched: list[EpisodeRecord] = []
        last, scanned = after, 0

        def take(name: LogName, cursor: str, load) -> bool:  # True: stop here
            nonlocal last, scanned
            scanned += 1
            last = cursor
            if match is None or match(name):
                record = load()
                if record is not None:
                    matched.append(record)
            return len(matched) >= limit or scanned >= max_scan

        def batch(name: str, start: int) -> bool:  # True: stop here
            for i, r in enumerate(list((self._batch_records(name) or {}).values())):
                if i >= start and self._is_first(name, i, r) and take(r.log_name, r.cursor, lambda r=r: r):
                    return True
            return False

        start = f"{LOG_PREFIX}{after}" if after else ""
        in_batch = parse_record_cursor(after) if after else None
        if in_batch is not None:  # the rest of the batch the cursor is in
            start = LOG_PREFIX + in_batch[0]
            if batch(in_batch[0], in_batch[1] + 1):
                return matched, last, False
        page = 64  # a watch poll usually finds a few new batches: ask for few names first
        while scanned < max_scan:
            keys = list(self._list_log(start, page))
            page = 1000
            if not keys:
                return matched, last, True
            for key in keys:
                start = key
                name = key[len(LOG_PREFIX) :]
                parsed = parse_batch_name(name)
                if parsed is not None:
                    if max_stored_ns is not None and parsed[0] > max_stored_ns:
                        return matched, last, True
                    if batch(name, 0):
                        return matched, last, False
                    continue
                try:
                    entry = LogName.parse_key(key)
                except ValueError:
                    continue  # not a log name of this store
                if max_stored_ns is not None and entry.stored_ns > max_stored_ns:
                    return matched, last, True
                # layout v1: one entry per episode, named by its fields; read only if it matches
                if take(entry, entry.cursor, lambda key=key: self._legacy_entry(key)):
                    return matched, last, False
        return matched, last, False

    def _legacy_entry(self, key: str) -> EpisodeRecord | None:
        body = self._get(key)
        return None if body is None else EpisodeRecord.from_json(body)
