"""Reading episode_store's commit log and records (`LogReader`, a mixin of `ObjectStoreBackend`).

Commit-log batches are immutable once written, so their records are cached by name. Layout v1
(one by-id record and one log entry per episode) is read too: its log entries share the
batches' key order, and GetEpisode falls back to its by-id records when the bucket has any.
"""

from __future__ import annotations

import collections
import threading

from mtopt.episode_store.backend import StorageUnavailableError
from mtopt.episode_store.layout import (
    BY_ID_PREFIX,
    LOG_PREFIX,
    MOVED_PREFIX,
    EpisodeRecord,
    LogName,
    by_id_key,
    data_key,
    decode_batch,
    parse_batch_name,
    parse_record_cursor,
)


class LogReader:
    """get, fetch, read and scan_log over the object primitives of `ObjectStoreBackend`."""

    CACHE_BATCHES = 4096

    def _init_reader(self) -> None:
        self._cache: collections.OrderedDict[str, dict[str, EpisodeRecord]] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self._legacy: bool | None = None

    def _remember(self, name: str, records: dict[str, EpisodeRecord]) -> None:
        with self._cache_lock:
            self._cache[name] = records
            self._cache.move_to_end(name)
            while len(self._cache) > self.CACHE_BATCHES:
                self._cache.popitem(last=False)

    def _batch_records(self, name: str) -> dict[str, EpisodeRecord] | None:
        """The records of a written batch by id, in commit order (following a move); None if unwritten."""
        with self._cache_lock:
            hit = self._cache.get(name)
            if hit is not None:
                self._cache.move_to_end(name)
                return hit
        final, body = name, self._get(LOG_PREFIX + name)
        if body is None:
            moved = self._get(MOVED_PREFIX + name)
            if moved is None:
                return None
            final = moved.decode()
            body = self._get(LOG_PREFIX + final)
            if body is None:
                return None
        records = {r.episode_id: r for r in decode_batch(final, body)}
        self._remember(final, records)
        if final != name:
            self._remember(name, records)
        return records

    def get(self, episode_id: str) -> EpisodeRecord | None:
        meta = self._head(data_key(episode_id))
        if meta is not None:
            record = self._committed(episode_id, meta.get("commit", ""), wait=False)
            return record if record is not None and record.sha256 == meta.get("sha256") else None
        return self._legacy_record(episode_id) if self._legacy_layout() else None

    def fetch(self, episode_id: str) -> tuple[EpisodeRecord, bytes] | None:
        got = self._get_with_meta(data_key(episode_id))
        if got is not None:
            data, meta = got
            record = self._committed(episode_id, meta.get("commit", ""), wait=False)
            return (record, data) if record is not None and record.sha256 == meta.get("sha256") else None
        record = self._legacy_record(episode_id) if self._legacy_layout() else None
        return None if record is None else (record, self.read(record))

    def read(self, record: EpisodeRecord) -> bytes:
        data = self._get(record.storage_key)
        if data is None:
            raise StorageUnavailableError(f"episode {record.episode_id}: data object {record.storage_key} is missing")
        return data

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

    def scan_log(self, after, limit, match=None, max_scan=10_000, max_stored_ns=None):
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

        start = f"{LOG_PREFIX}{after}" if after else ""
        in_batch = parse_record_cursor(after) if after else None
        if in_batch is not None:  # the rest of the batch the cursor is in
            start = LOG_PREFIX + in_batch[0]
            for r in list((self._batch_records(in_batch[0]) or {}).values())[in_batch[1] + 1 :]:
                if take(r.log_name, r.cursor, lambda r=r: r):
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
                batch = parse_batch_name(name)
                if batch is not None:
                    if max_stored_ns is not None and batch[0] > max_stored_ns:
                        return matched, last, True
                    for r in (self._batch_records(name) or {}).values():
                        if take(r.log_name, r.cursor, lambda r=r: r):
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
