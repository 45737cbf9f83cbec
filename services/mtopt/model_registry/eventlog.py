"""One model's event log and state snapshot in an object store (layout in `layout`).

The log is a chain of entries ``models/<model>/log/<first sequence>.json``, each created only if
absent and only by a writer that has read the entry before it, so the chain has no gaps and no
overlaps however many replicas append. `EventLog` reads it and appends to it; it knows nothing
of what the events mean (that is `state.ModelState`).

Usage (blocking)::

    log = EventLog(objects, "q_function")
    state = log.load_snapshot()                     # or ModelState("q_function")
    for e in log.read_after(state.last_sequence):
        state.apply(e)
    if not log.append(events_numbered_from(state.last_sequence + 1)):
        ...                                         # another writer was first: read, plan again
"""

from __future__ import annotations

import json
import logging

from mtopt.model_registry.errors import StorageUnavailableError
from mtopt.model_registry.layout import MAX_EVENTS_PER_ENTRY, Event, decode_entry, dumps, encode_entry, log_key, log_prefix, snapshot_key
from mtopt.model_registry.objects import ObjectStore
from mtopt.model_registry.state import ModelState

log = logging.getLogger(__name__)


class EventLog:
    """The event log and snapshot of one model."""

    def __init__(self, objects: ObjectStore, model: str):
        self.objects, self.model = objects, model
        self.prefix = log_prefix(model)

    def exists(self) -> bool:
        """Whether the log has any entry (the model was ever published)."""
        return bool(self.objects.list_keys(self.prefix, "", 1))

    def _entry(self, key: str) -> list[Event]:
        body = self.objects.get(key)
        if body is None:
            raise StorageUnavailableError(f"event log entry {key} vanished while reading it")
        return decode_entry(self.model, body)

    def read_after(self, last_sequence: int) -> list[Event]:
        """Every event after ``last_sequence`` (the end of a complete entry), oldest first."""
        new: list[Event] = []
        while True:
            after = last_sequence + len(new)
            keys = self.objects.list_keys(self.prefix, log_key(self.model, after) if after else "", 1000)
            if not keys:
                return new
            for key in keys:
                events = self._entry(key)
                expected = last_sequence + len(new) + 1
                if events[0].sequence != expected:
                    raise StorageUnavailableError(f"event log of model {self.model} is broken at {key}: expected sequence {expected}")
                new.extend(events)

    def page(self, after: int, limit: int) -> list[Event]:
        """Up to ``limit`` events after sequence ``after`` (which may lie inside an entry)."""
        start = max(0, after - MAX_EVENTS_PER_ENTRY)  # the entry holding after + 1 starts at or after this
        out: list[Event] = []
        cursor = log_key(self.model, start) if start else ""
        while len(out) < limit:
            keys = self.objects.list_keys(self.prefix, cursor, 100)
            if not keys:
                break
            for key in keys:
                out.extend(e for e in self._entry(key) if e.sequence > after)
            cursor = keys[-1]
        return out[:limit]

    def append(self, events: list[Event]) -> bool:
        """Creates the entry of ``events`` (numbered from the log's next sequence); False if
        another writer created that entry first."""
        assert 0 < len(events) <= MAX_EVENTS_PER_ENTRY
        return self.objects.put_if_absent(log_key(self.model, events[0].sequence), encode_entry(events))

    def load_snapshot(self) -> ModelState:
        """The newest snapshot, or an empty state if there is none or it is unreadable."""
        body = self.objects.get(snapshot_key(self.model))
        if body is not None:
            try:
                return ModelState.from_snapshot(json.loads(body))
            except (ValueError, KeyError, TypeError) as e:
                log.warning("model %s: ignoring unreadable snapshot (replaying the whole log): %s", self.model, e)
        return ModelState(self.model)

    def save_snapshot(self, snapshot: dict) -> None:
        """Writes a snapshot; a failure only makes the next start slower, so it is logged, not raised."""
        try:
            self.objects.put(snapshot_key(self.model), dumps(snapshot))
        except StorageUnavailableError as e:
            log.warning("model %s: writing the snapshot failed: %s", self.model, e)
