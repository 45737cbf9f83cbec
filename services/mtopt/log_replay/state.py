"""The persisted progress of log_replay: one small JSON object, ``log_replay/cursor.json``.

It is written after every processed batch of episodes, and only once those episodes are in the
buffers, so a restart resumes right after the last episode counted and never counts one twice
(the count and the cursor are one atomic write). The buffers themselves are a cache of the
store: ``refill_cursor`` says where the oldest buffered episode starts, and a restart re-reads
the store from there up to ``cursor`` without counting those episodes again.

Usage (blocking calls; the server runs them in its thread pool)::

    store = CursorStore(LocalDirObjects(Path("data/log_replay")))
    state = store.load()                 # ReplayState() on first start
    state.cursor = event.cursor; state.episodes_processed += 1
    store.save(state)
"""

from __future__ import annotations

import dataclasses
import json

from mtopt.model_registry.objects import ObjectStore

CURSOR_KEY = "log_replay/cursor.json"


@dataclasses.dataclass
class ReplayState:
    """What survives a restart."""

    cursor: str = ""
    """WatchEpisodes cursor of the last processed episode ("" before the first)."""
    refill_cursor: str = ""
    """Cursor after which the oldest buffered episode comes ("" = from the beginning of history)."""
    episodes_processed: int = 0
    """Episodes labelled and added to the buffers, all time."""
    processed_by_task: dict[str, int] = dataclasses.field(default_factory=dict)
    """episodes_processed split by collecting task."""
    sd_version: int = 0
    """SD version the buffers are labelled with (0: not chosen yet)."""
    serving_seen: int = 0
    """Last serving SD version seen by the poller (a different one triggers relabelling)."""
    relabel: dict = dataclasses.field(default_factory=dict)
    """The most recent finished relabelling run (RelabelProgress fields), for GetStats."""

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "ReplayState":
        d = json.loads(data)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def copy(self) -> "ReplayState":
        return dataclasses.replace(self, processed_by_task=dict(self.processed_by_task), relabel=dict(self.relabel))


class CursorStore:
    """Loads and saves `ReplayState` as one object of an `ObjectStore` (local dir or S3)."""

    def __init__(self, objects: ObjectStore, key: str = CURSOR_KEY):
        self.objects, self.key = objects, key

    def load(self) -> ReplayState:
        """The saved state (ReplayState() on first start); pings first, which creates a missing bucket."""
        self.objects.ping()
        data = self.objects.get(self.key)
        if data is None:
            return ReplayState()
        try:
            return ReplayState.from_json(data)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{self.objects.uri(self.key)} is not a log_replay cursor ({e}); move it away to start over from the beginning"
            ) from None

    def save(self, state: ReplayState) -> None:
        self.objects.put(self.key, state.to_json())

    def ping(self) -> None:
        self.objects.ping()

    def close(self) -> None:
        self.objects.close()
