"""The registry over an `ObjectStore`: publishing, lookups, aliases, pins and the event log.

Every change is one entry appended to the model's event log with "create only if absent"
(optimistic concurrency: a writer that loses the race for the next entry re-reads the log and
plans again), so replicas over one bucket never overwrite each other and every replica folds
the same log into the same state. Each process keeps that state, and the most recent events,
in memory: reads and watch streams cost no storage round trip.

A publish reserves its version number (versions/N/claim.json, create-only), writes the
artifacts and the manifest, and only then appends its PUBLISHED event: a version is visible
only complete. A publish that dies half-way leaves an unreferenced claim (its number is
skipped), never a visible broken version.

Usage (blocking calls; the server runs them in a thread pool)::

    registry = Registry(LocalDirObjects(path))
    registry.load()
    record, existed = registry.publish(new_version, {"q_tower.onnx": data, ...})
    registry.set_alias("q_function", "stable", record.version, reason="eval passed")
    record, source = registry.resolve("q_function", "robot-7", "stable")
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
import time
from typing import Callable, Mapping

from mtopt.model_registry.errors import ConflictError, NotFoundError, OutOfRangeError, StorageUnavailableError
from mtopt.model_registry.eventlog import EventLog
from mtopt.model_registry.layout import (
    MODEL_PATTERN, MODELS_PREFIX, ArtifactRecord, Event, NewVersion, VersionRecord, artifact_key, claim_key, dumps,
    manifest_key,
)
from mtopt.model_registry.objects import ObjectStore
from mtopt.model_registry.state import ModelState, PointInTime, rewind
from mtopt.v1 import common_pb2

log = logging.getLogger(__name__)

Listener = Callable[[str, list[Event], ModelState], None]


class _Model:
    """One model's state, recent events and locks."""

    def __init__(self, event_log: EventLog, ring_size: int):
        self.name = event_log.model
        self.log = event_log
        self.state = state = event_log.load_snapshot()
        self.ring: collections.deque[Event] = collections.deque()
        self.ring_size = ring_size
        self.ring_floor = state.last_sequence  # the ring holds every event after this one
        self.mu = threading.Lock()  # state and ring (held for microseconds)
        self.io = threading.RLock()  # reading and appending the log
        self.publishing = threading.Lock()  # one publish of this model at a time per process
        self.since_snapshot = 0


@dataclasses.dataclass(frozen=True)
class WatchStart:
    """Where a watch stream begins: the state at ``at.sequence`` and the events after it that
    are already in the log (the backlog, up to ``last_sequence``)."""

    at: PointInTime
    backlog: list[Event]
    last_sequence: int


class Registry:
    """All models of one registry process (see the module docstring)."""

    def __init__(self, objects: ObjectStore, *, ring_size: int = 10_000, snapshot_every: int = 256,
                 clock: Callable[[], int] = time.time_ns):
        self.objects = objects
        self.ring_size, self.snapshot_every, self._clock = ring_size, snapshot_every, clock
        self._models: dict[str, _Model] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.RLock()
        self.loaded = False
        self.listeners: list[Listener] = []

    # -- loading and refreshing ------------------------------------------------------------------
    def ensure_loaded(self) -> None:
        """Pings the storage and, the first time it answers, loads every model (the readiness check)."""
        self.objects.ping()
        if not self.loaded:
            with self._load_lock:
                if not self.loaded:
                    for name in self.objects.list_dirs(MODELS_PREFIX):
                        if MODEL_PATTERN.match(name):
                            self._load(name)
                    self.loaded = True
                    log.info("model registry loaded %d model(s): %s", len(self._models), ", ".join(sorted(self._models)) or "none")

    def _require_loaded(self) -> None:
        if not self.loaded:
            raise StorageUnavailableError("the registry has not loaded its storage yet (health is NOT_SERVING); retry shortly")

    def _load(self, name: str, create: bool = False) -> _Model | None:
        """The model from storage (snapshot, then the log after it); None if it has no log and
        ``create`` is False. The log is folded in with one update, so a reader sees the snapshot's
        state or the replayed one, never half a replay; writers wait for the replay (``io``)."""
        with self._lock:
            m = self._models.get(name)
        if m is not None:
            return m
        if not create and not EventLog(self.objects, name).exists():
            return None
        with self._load_lock:
            with self._lock:
                m = self._models.get(name)
            if m is None:
                m = _Model(EventLog(self.objects, name), self.ring_size)
                with m.io:
                    with self._lock:
                        self._models[name] = m
                    try:
                        self._refresh(m)
                    except BaseException:
                        with self._lock:
                            del self._models[name]
                        raise
                self._notify(m, [])  # gauges reflect a model loaded from a snapshot with nothing after it
        return m

    def _known(self, name: str, *, create: bool = False, probe: bool = True) -> _Model | None:
        """The model, loading it from shared storage if another replica created it (``probe``),
        or creating it (``create``)."""
        self._require_loaded()
        with self._lock:
            m = self._models.get(name)
        if m is None and (create or (probe and self.objects.shared)):
            m = self._load(name, create=create)
        return m

    def _existing(self, name: str) -> _Model:
        m = self._known(name)
        if m is None or not m.state.exists:
            raise NotFoundError(f"unknown model {name!r}: nothing was ever published under that name (models: "
                                f"{', '.join(self.models()) or 'none'})")
        return m

    def models(self) -> list[str]:
        with self._lock:
            return sorted(n for n, m in self._models.items() if m.state.exists)

    def _refresh(self, m: _Model) -> list[Event]:
        """Reads log entries after the state's last sequence and folds them in."""
        with m.io:
            new = m.log.read_after(m.state.last_sequence)
            if new:
                self._apply(m, new)
        return new

    def refresh_all(self) -> None:
        """Picks up changes other replicas made (models and events); the watch hub polls this."""
        if not self.loaded:
            return
        for name in self.objects.list_dirs(MODELS_PREFIX):
            if MODEL_PATTERN.match(name):
                self._load(name)
        with self._lock:
            models = list(self._models.values())
        for m in models:
            self._refresh(m)

    def _apply(self, m: _Model, events: list[Event]) -> None:
        with m.mu:
            for e in events:
                m.state.apply(e)
                m.ring.append(e)
            while len(m.ring) > m.ring_size:
                m.ring_floor = m.ring.popleft().sequence
            m.since_snapshot += len(events)
        self._notify(m, events)

    def _notify(self, m: _Model, events: list[Event]) -> None:
        for listener in self.listeners:
            try:
                listener(m.name, events, m.state)
            except Exception:
                log.exception("model registry listener failed")

    # -- the log -----------------------------------------------------------------------------------
    def _commit(self, m: _Model, plan: Callable[[ModelState], tuple[list[Event], object]]):
        """Appends the events ``plan`` returns for the newest state; returns plan's answer."""
        with m.io:
            refresh = self.objects.shared
            for _ in range(100):
                if refresh:
                    self._refresh(m)
                with m.mu:
                    events, answer = plan(m.state)
                    first = m.state.last_sequence + 1
                if not events:
                    return answer
                now = self._clock()
                events = [dataclasses.replace(e, sequence=first + i, time_ns=now) for i, e in enumerate(events)]
                if m.log.append(events):
                    self._apply(m, events)
                    self._maybe_snapshot(m)
                    return answer
                refresh = True  # another writer took this position: read it, plan again
        raise StorageUnavailableError(f"the event log of model {m.name} is too contended; retry")

    def _maybe_snapshot(self, m: _Model, force: bool = False) -> None:
        if m.since_snapshot < (1 if force else self.snapshot_every):
            return
        with m.mu:
            snapshot = m.state.to_snapshot()
            m.since_snapshot = 0
        m.log.save_snapshot(snapshot)

    def close(self) -> None:
        """Writes the snapshots that are behind (a faster next start)."""
        with self._lock:
            models = list(self._models.values())
        for m in models:
            if m.state.exists:
                self._maybe_snapshot(m, force=True)

    # -- publishing --------------------------------------------------------------------------------
    def find_published(self, new: NewVersion) -> VersionRecord | None:
        """The version an earlier publish with the same publish_id created (ConflictError if it
        holds other artifacts), else None."""
        m = self._known(new.model, probe=False)
        if m is None or not new.publish_id:
            return None
        with m.mu:
            v = m.state.publish_ids.get(new.publish_id)
            record = m.state.versions.get(v) if v else None
        if record is not None and not new.same_content(record):
            raise ConflictError(f"publish_id {new.publish_id!r} already published version {record.version} of {new.model!r} "
                                "with other artifacts; use a fresh publish_id for new weights")
        return record

    def publish(self, new: NewVersion, blobs: Mapping[str, bytes]) -> tuple[VersionRecord, bool]:
        """Stores a verified version and makes it visible; idempotent on publish_id.

        Returns (record, already_existed). ``blobs`` holds every artifact's bytes by name.
        """
        m = self._known(new.model, create=True)
        with m.publishing:
            if self.objects.shared:
                self._refresh(m)
            existing = self.find_published(new)
            if existing is not None:
                return existing, True
            version = self._claim(m, new)
            for a in new.artifacts:
                self.objects.put(artifact_key(new.model, version, a.name), blobs[a.name])
            record = VersionRecord.create(new, version, self._clock())
            self.objects.put(manifest_key(new.model, version), dumps(record.to_dict()))

            def plan(state: ModelState):
                raced = state.publish_ids.get(new.publish_id) if new.publish_id else None
                if raced:  # the same publish_id committed through another replica meanwhile
                    return [], (state.versions[raced], True)
                return state.plan_publish(record, new.aliases), (record, False)

            return self._commit(m, plan)

    def _claim(self, m: _Model, new: NewVersion) -> int:
        """Reserves the next free version number (create-only claim object)."""
        content = [(a.name, a.sha256) for a in new.artifacts]
        body = dumps({"publish_id": new.publish_id, "artifacts": content, "time_ns": self._clock()})
        version = m.state.max_version + 1
        for _ in range(1000):
            if self.objects.put_if_absent(claim_key(m.name, version), body):
                break
            other = self.objects.get(claim_key(m.name, version))
            if (other is not None and new.publish_id and version not in m.state.versions
                    and json.loads(other).get("publish_id") == new.publish_id
                    and [tuple(a) for a in json.loads(other).get("artifacts", [])] == content):
                break  # our own earlier attempt died half-way: finish it under the same number
            version += 1
        else:
            raise StorageUnavailableError(f"could not reserve a version number for model {m.name}; retry")
        return version

    # -- lookups -------------------------------------------------------------------------------------
    def _read(self, name: str, fn: Callable[[ModelState], object]):
        """fn(state) under the model's lock; on NotFoundError with shared storage, re-reads the
        log once (another replica may have just made the change) and tries again."""
        m = self._existing(name)
        try:
            with m.mu:
                return fn(m.state)
        except NotFoundError:
            if not self.objects.shared or not self._refresh(m):
                raise
        with m.mu:
            return fn(m.state)

    def get_version(self, model: str, version: int = 0, alias: str = "") -> tuple[VersionRecord, list[str]]:
        """A version by number or alias, with the aliases pointing at it."""
        def fn(s: ModelState):
            record = s.version(version) if not alias else s.versions[s.alias_target(alias)]
            return record, s.aliases_of(record.version)
        return self._read(model, fn)

    def list_versions(self, model: str, below: int, limit: int) -> tuple[list[tuple[VersionRecord, list[str]]], int, dict[str, int]]:
        """Up to ``limit`` versions numbered below ``below`` (0: from the newest), newest first;
        returns (versions with their aliases, the ``below`` of the next page or 0, all aliases)."""
        def fn(s: ModelState):
            numbers = sorted((v for v in s.versions if not below or v < below), reverse=True)
            page = numbers[:limit]
            nxt = page[-1] if len(numbers) > limit else 0
            return [(s.versions[v], s.aliases_of(v)) for v in page], nxt, dict(s.aliases)
        return self._read(model, fn)

    def artifact(self, model: str, version: int, name: str, kind: int) -> tuple[ArtifactRecord, str]:
        """(artifact, object key) of a version's artifact by name, else the first of ``kind``."""
        def fn(s: ModelState):
            record = s.version(version)
            a = record.artifact(name, kind)
            if a is None:
                what = f"artifact named {name!r}" if name else f"artifact of kind {common_pb2.ArtifactKind.Name(kind)}"
                raise NotFoundError(f"version {version} of {model!r} has no {what}; it has: "
                                    f"{', '.join(x.name for x in record.artifacts)}")
            return a, artifact_key(model, version, a.name)
        return self._read(model, fn)

    def read_artifact(self, key: str, offset: int, length: int) -> bytes:
        data = self.objects.get_range(key, offset, length)
        if data is None:
            raise StorageUnavailableError(f"artifact object {key} is missing from storage")
        return data

    def resolve(self, model: str, robot_id: str, alias: str) -> tuple[VersionRecord, str, list[str]]:
        """(version, "pin" or "alias", its aliases) that robot should run."""
        def fn(s: ModelState):
            record, source = s.resolve(robot_id, alias)
            return record, source, s.aliases_of(record.version)
        return self._read(model, fn)

    def version_record(self, model: str, version: int) -> VersionRecord | None:
        m = self._known(model, probe=False)
        if m is None:
            return None
        with m.mu:
            return m.state.versions.get(version)

    # -- changes -------------------------------------------------------------------------------------
    def _change(self, model: str, plan: Callable[[ModelState], tuple[list[Event], object]]):
        return self._commit(self._existing(model), plan)

    def set_alias(self, model: str, alias: str, version: int, reason: str = "") -> int:
        """Points ``alias`` at ``version``; returns the previous target (0 if new)."""
        return self._change(model, lambda s: s.plan_set_alias(alias, version, reason))

    def pin(self, model: str, robot_id: str, version: int, reason: str = "") -> int:
        """Pins a robot; returns the previous pin (0 if none)."""
        return self._change(model, lambda s: s.plan_pin(robot_id, version, reason))

    def unpin(self, model: str, robot_id: str) -> int:
        """Removes a robot's pin; returns it (0 if the robot was not pinned)."""
        return self._change(model, lambda s: s.plan_unpin(robot_id))

    def rollback(self, model: str, alias: str, to_version: int, reason: str = "") -> tuple[int, int]:
        """Moves ``alias`` back; returns (from_version, to_version)."""
        def plan(s: ModelState):
            events, current, target = s.plan_rollback(alias, to_version, reason)
            return events, (current, target)
        return self._change(model, plan)

    def aliases_of(self, model: str, version: int) -> list[str]:
        """Aliases pointing at a version of a model this process knows (no storage I/O)."""
        m = self._known(model, probe=False)
        if m is None:
            raise NotFoundError(f"unknown model {model!r}")
        with m.mu:
            return m.state.aliases_of(version)

    # -- events --------------------------------------------------------------------------------------
    def last_sequence(self, model: str) -> int:
        with self._lock:
            m = self._models.get(model)
        return 0 if m is None else m.state.last_sequence

    def cached_events(self, model: str, after: int, limit: int = 1000) -> list[Event] | None:
        """Events after ``after`` from memory, or None if they are older than the ring (then
        `events` reads them from the log)."""
        with self._lock:
            m = self._models.get(model)
        if m is None:
            return []
        with m.mu:
            if after < m.ring_floor:
                return None
            start = after - m.ring_floor
            return [m.ring[i] for i in range(start, min(len(m.ring), start + limit))]

    def events(self, model: str, after: int, limit: int = 1000) -> list[Event]:
        """Up to ``limit`` events after sequence ``after``, from memory or the log."""
        cached = self.cached_events(model, after, limit)
        return cached if cached is not None else EventLog(self.objects, model).page(after, limit)

    def watch_start(self, model: str, after: int, robot_id: str) -> WatchStart:
        """The state at ``after`` (0: now) and the events since (see `WatchStart`).

        A model nobody has published yet can be watched (its first PUBLISHED arrives live).
        OutOfRangeError if ``after`` lies beyond the log.
        """
        m = self._known(model)
        if m is not None and after > m.state.last_sequence and self.objects.shared:
            self._refresh(m)
        last = 0 if m is None else m.state.last_sequence
        if after > last:
            raise OutOfRangeError(f"after_sequence {after} lies beyond the last event ({last}) of model {model!r}: "
                                  "was the registry's storage reset? Watch again with after_sequence=0")
        if m is None:
            return WatchStart(PointInTime(0, {}, 0), [], 0)
        with m.mu:
            last = m.state.last_sequence
            aliases, pin = dict(m.state.aliases), m.state.pins.get(robot_id, 0) if robot_id else 0
        backlog: list[Event] = []
        if after:
            while True:
                batch = self.events(model, after + len(backlog), 1000)
                batch = [e for e in batch if e.sequence <= last]
                if not batch:
                    break
                backlog.extend(batch)
        start = after or last
        return WatchStart(rewind(aliases, pin, robot_id, backlog, start), backlog, last)
