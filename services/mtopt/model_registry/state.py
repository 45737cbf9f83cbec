"""The registry's state of one model as the fold of its event log, and the rules for changing it.

`ModelState.apply` folds log events into versions, aliases (with their history, for rollback)
and per-robot pins. The ``plan_*`` methods check a request against the current state and return
the events that would carry it out (without sequence numbers: the registry assigns those when
it appends them to the log) plus the answer for the caller. They never change the state
themselves, so a request that fails leaves nothing behind, and a writer that lost a race for the
next log entry simply plans again on the newer state.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

from mtopt.model_registry.errors import InvalidRequestError, NotFoundError, PreconditionError
from mtopt.model_registry.layout import (
    ALIAS_SET, LATEST, PINNED, PUBLISHED, ROLLED_BACK, UNPINNED, Event, VersionRecord,
)

HISTORY_LIMIT = 100
"""Earlier targets remembered per alias (for Rollback without to_version)."""


def _event(type_: str, model: str, **fields) -> Event:
    return Event(sequence=0, type=type_, model=model, time_ns=0, **fields)


class ModelState:
    """Versions, aliases, alias history and pins of one model after ``last_sequence`` events."""

    def __init__(self, model: str):
        self.model = model
        self.versions: dict[int, VersionRecord] = {}
        self.aliases: dict[str, int] = {}
        self.history: dict[str, list[int]] = {}
        self.pins: dict[str, int] = {}
        self.publish_ids: dict[str, int] = {}
        self.last_sequence = 0
        self.max_version = 0

    # -- fold ------------------------------------------------------------------------------------
    def apply(self, e: Event) -> None:
        """Folds the next log event in (its sequence must follow ``last_sequence``)."""
        if e.sequence != self.last_sequence + 1:
            raise ValueError(f"model {self.model}: event log jumps from {self.last_sequence} to {e.sequence}")
        if e.type == PUBLISHED:
            assert e.record is not None, "PUBLISHED events carry their version record"
            self.versions[e.version] = e.record
            if e.record.publish_id:
                self.publish_ids[e.record.publish_id] = e.version
            self.max_version = max(self.max_version, e.version)
        elif e.type == ALIAS_SET:
            previous = self.aliases.get(e.alias, 0)
            if previous and previous != e.version:
                h = self.history.setdefault(e.alias, [])
                h.append(previous)
                del h[:-HISTORY_LIMIT]
            self.aliases[e.alias] = e.version
        elif e.type == ROLLED_BACK:
            h = self.history.get(e.alias, [])
            if e.version in h:  # rolling back to an earlier target forgets everything after it
                del h[len(h) - 1 - h[::-1].index(e.version):]
            self.aliases[e.alias] = e.version
        elif e.type == PINNED:
            self.pins[e.robot_id] = e.version
        elif e.type == UNPINNED:
            self.pins.pop(e.robot_id, None)
        self.last_sequence = e.sequence

    # -- queries ---------------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return bool(self.versions)

    def version(self, version: int) -> VersionRecord:
        if version <= 0:
            raise InvalidRequestError(f"version must be >= 1, got {version}")
        record = self.versions.get(version)
        if record is None:
            raise NotFoundError(f"model {self.model!r} has no version {version} (versions 1..{self.max_version} exist, "
                                "or the publish has not completed)")
        return record

    def alias_target(self, alias: str) -> int:
        if alias not in self.aliases:
            known = ", ".join(sorted(self.aliases)) or "none"
            raise NotFoundError(f"model {self.model!r} has no alias {alias!r} (aliases: {known}); set it with SetAlias")
        return self.aliases[alias]

    def aliases_of(self, version: int) -> list[str]:
        return sorted(a for a, v in self.aliases.items() if v == version)

    def resolve(self, robot_id: str, alias: str) -> tuple[VersionRecord, str]:
        """(version, "pin" or "alias") the robot should run: its pin, else the alias."""
        if robot_id and robot_id in self.pins:
            return self.versions[self.pins[robot_id]], "pin"
        if alias not in self.aliases:
            who = f"robot {robot_id!r} is not pinned and " if robot_id else ""
            raise NotFoundError(f"{who}model {self.model!r} has no alias {alias!r}; set it with SetAlias, pin the robot, "
                                "or follow another alias")
        return self.versions[self.aliases[alias]], "alias"

    # -- plans -----------------------------------------------------------------------------------
    def plan_publish(self, record: VersionRecord, aliases: Iterable[str]) -> list[Event]:
        """PUBLISHED, then "latest" (if this is the highest version), then the requested aliases."""
        if record.version in self.versions:
            raise ValueError(f"model {self.model}: version {record.version} is already published")
        events = [_event(PUBLISHED, self.model, version=record.version, record=record)]
        if record.version > self.aliases.get(LATEST, 0):
            events.append(_event(ALIAS_SET, self.model, version=record.version, alias=LATEST,
                                 previous_version=self.aliases.get(LATEST, 0), reason="publish"))
        for alias in dict.fromkeys(aliases):
            if alias != LATEST and self.aliases.get(alias) != record.version:
                events.append(_event(ALIAS_SET, self.model, version=record.version, alias=alias,
                                     previous_version=self.aliases.get(alias, 0), reason="publish"))
        return events

    def plan_set_alias(self, alias: str, version: int, reason: str) -> tuple[list[Event], int]:
        self.version(version)
        previous = self.aliases.get(alias, 0)
        if previous == version:
            return [], previous  # already there: idempotent, no event
        return [_event(ALIAS_SET, self.model, version=version, alias=alias, previous_version=previous, reason=reason)], previous

    def plan_pin(self, robot_id: str, version: int, reason: str) -> tuple[list[Event], int]:
        self.version(version)
        previous = self.pins.get(robot_id, 0)
        if previous == version:
            return [], previous
        return [_event(PINNED, self.model, version=version, robot_id=robot_id, previous_version=previous, reason=reason)], previous

    def plan_unpin(self, robot_id: str) -> tuple[list[Event], int]:
        previous = self.pins.get(robot_id, 0)
        if not previous:
            return [], 0
        return [_event(UNPINNED, self.model, robot_id=robot_id, previous_version=previous)], previous

    def plan_rollback(self, alias: str, to_version: int, reason: str) -> tuple[list[Event], int, int]:
        """(events, from_version, to_version); to_version 0 means the alias's previous target."""
        current = self.alias_target(alias)
        if to_version < 0:
            raise InvalidRequestError(f"to_version must be >= 0 (0: the previous target of {alias!r}), got {to_version}")
        if to_version == 0:
            earlier = [v for v in self.history.get(alias, []) if v != current]
            if not earlier:
                raise PreconditionError(f"alias {alias!r} of model {self.model!r} has no earlier version to roll back to; "
                                        "pass to_version")
            to_version = earlier[-1]
        self.version(to_version)
        if to_version == current:
            return [], current, current  # a retried rollback: already done
        return [_event(ROLLED_BACK, self.model, version=to_version, alias=alias, previous_version=current, reason=reason)], current, to_version

    # -- snapshots -------------------------------------------------------------------------------
    def to_snapshot(self) -> dict:
        return {
            "format": 1, "model": self.model, "last_sequence": self.last_sequence,
            "versions": [r.to_dict() for _, r in sorted(self.versions.items())],
            "aliases": dict(self.aliases), "history": {a: list(h) for a, h in self.history.items()}, "pins": dict(self.pins),
        }

    @classmethod
    def from_snapshot(cls, d: Mapping) -> "ModelState":
        if d.get("format") != 1:
            raise ValueError(f"unsupported snapshot format {d.get('format')!r}")
        s = cls(d["model"])
        for r in d["versions"]:
            record = VersionRecord.from_dict(r)
            s.versions[record.version] = record
            if record.publish_id:
                s.publish_ids[record.publish_id] = record.version
        s.max_version = max(s.versions, default=0)
        s.aliases = {a: int(v) for a, v in d["aliases"].items()}
        s.history = {a: [int(v) for v in h] for a, h in d["history"].items()}
        s.pins = {r: int(v) for r, v in d["pins"].items()}
        s.last_sequence = int(d["last_sequence"])
        return s


@dataclasses.dataclass
class PointInTime:
    """Aliases and one robot's pin as they were at ``sequence`` (where a watch starts)."""

    sequence: int
    aliases: dict[str, int]
    pin: int


def rewind(aliases: Mapping[str, int], pin: int, robot_id: str, later_events: list[Event], sequence: int) -> PointInTime:
    """Undoes ``later_events`` (all events after ``sequence``, oldest first) from the current
    aliases and pin, using each event's previous_version."""
    aliases, pin = dict(aliases), pin
    for e in reversed(later_events):
        if e.type in (ALIAS_SET, ROLLED_BACK):
            if e.previous_version:
                aliases[e.alias] = e.previous_version
            else:
                aliases.pop(e.alias, None)
        elif e.type in (PINNED, UNPINNED) and robot_id and e.robot_id == robot_id:
            pin = e.previous_version
    return PointInTime(sequence, aliases, pin)
