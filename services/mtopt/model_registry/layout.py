"""Where model_registry keeps things, and the records it keeps (see docs/model_registry.md).

The same layout is used in a MinIO/S3 bucket and under a local directory::

    models/<model>/versions/<NNNNNNNNNN>/claim.json
        Created only if absent: reserves version number N for one publish (N zero-padded to
        10 digits, so keys sort in version order).
    models/<model>/versions/<NNNNNNNNNN>/artifacts/<name>
        The artifact bytes, exactly as published (their SHA-256 is in the manifest).
    models/<model>/versions/<NNNNNNNNNN>/manifest.json
        The version's `VersionRecord` as JSON, written after every artifact.
    models/<model>/log/<SSSSSSSSSSSS>.json
        The event log. Each entry holds the events of one change (a publish and the alias moves
        it causes, an alias set, a pin, ...) with consecutive sequence numbers; the key is the
        first one (12 digits). Entries are created only if absent, each right after the previous
        one, so the log is one gap-free chain even when several replicas write. A version is
        visible once its PUBLISHED event is in the log; aliases and pins are the fold of the log.
    models/<model>/snapshot.json
        The fold of the log up to a sequence (written every few hundred events): a restart reads
        it and then only the log entries after it. Derived data; deleting it only slows a start.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Mapping

from mtopt.episode_codec import ID_PATTERN
from mtopt.v1 import common_pb2

MODELS_PREFIX = "models/"
MODEL_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
"""Model names become key prefixes: lower-case letters, digits, ., _ and -, at most 64."""
ALIAS_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")
ARTIFACT_NAME_PATTERN = ID_PATTERN
"""Artifact names become keys: 1-128 characters of [A-Za-z0-9._-] starting with a letter or digit."""
ROBOT_PATTERN = ID_PATTERN
"""Robot ids as everywhere in mtopt (episode_codec.ID_PATTERN)."""
LATEST = "latest"
MAX_EVENTS_PER_ENTRY = 32
"""A log entry holds at most this many events (a publish moves at most 16 aliases besides latest)."""
MAX_PUBLISH_ALIASES = 16

PUBLISHED, ALIAS_SET, PINNED, UNPINNED, ROLLED_BACK = "published", "alias_set", "pinned", "unpinned", "rolled_back"
EVENT_TYPES = (PUBLISHED, ALIAS_SET, PINNED, UNPINNED, ROLLED_BACK)


def model_prefix(model: str) -> str:
    return f"{MODELS_PREFIX}{model}/"


def version_prefix(model: str, version: int) -> str:
    return f"{model_prefix(model)}versions/{version:010d}/"


def claim_key(model: str, version: int) -> str:
    return f"{version_prefix(model, version)}claim.json"


def manifest_key(model: str, version: int) -> str:
    return f"{version_prefix(model, version)}manifest.json"


def artifact_key(model: str, version: int, name: str) -> str:
    return f"{version_prefix(model, version)}artifacts/{name}"


def log_prefix(model: str) -> str:
    return f"{model_prefix(model)}log/"


def log_key(model: str, sequence: int) -> str:
    return f"{log_prefix(model)}{sequence:012d}.json"


def sequence_of_log_key(key: str) -> int:
    name = key.rsplit("/", 1)[-1]
    if not name.endswith(".json") or not name[:-5].isdigit():
        raise ValueError(f"not an event-log key: {key!r}")
    return int(name[:-5])


def snapshot_key(model: str) -> str:
    return f"{model_prefix(model)}snapshot.json"


def kind_name(kind: int) -> str:
    """ARTIFACT_KIND_ONNX -> "onnx" (how kinds are written in JSON)."""
    return common_pb2.ArtifactKind.Name(kind).removeprefix("ARTIFACT_KIND_").lower()


def kind_value(name: str) -> int:
    return common_pb2.ArtifactKind.Value("ARTIFACT_KIND_" + name.upper())


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclasses.dataclass(frozen=True)
class ArtifactRecord:
    """One stored file of a version."""

    name: str
    kind: int
    size_bytes: int
    sha256: str

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": kind_name(self.kind), "size_bytes": self.size_bytes, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ArtifactRecord":
        return cls(d["name"], kind_value(d["kind"]), int(d["size_bytes"]), d["sha256"])


@dataclasses.dataclass(frozen=True)
class TaskRecord:
    """A task of the catalogue a model was trained with (mtopt.v1.Task)."""

    name: str
    skill: str = ""
    description: str = ""
    index: int = 0


@dataclasses.dataclass(frozen=True)
class NewVersion:
    """What a publisher asks for, verified, before the registry gives it a number."""

    model: str
    publish_id: str
    step: int = 0
    parent_version: int = 0
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    artifacts: tuple[ArtifactRecord, ...] = ()
    aliases: tuple[str, ...] = ()
    tasks: tuple[TaskRecord, ...] = ()
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def same_content(self, other: "VersionRecord") -> bool:
        """Whether a stored version holds the very artifacts this publish announces."""
        return [(a.name, a.sha256) for a in self.artifacts] == [(a.name, a.sha256) for a in other.artifacts]


@dataclasses.dataclass(frozen=True)
class VersionRecord:
    """One immutable, numbered version (the manifest, and the payload of its PUBLISHED event)."""

    model: str
    version: int
    publish_id: str
    created_ns: int
    step: int = 0
    parent_version: int = 0
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    artifacts: tuple[ArtifactRecord, ...] = ()
    tasks: tuple[TaskRecord, ...] = ()
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def create(cls, new: NewVersion, version: int, created_ns: int) -> "VersionRecord":
        return cls(new.model, version, new.publish_id, created_ns, new.step, new.parent_version, dict(new.metrics),
                   tuple(new.artifacts), tuple(new.tasks), dict(new.labels))

    def artifact(self, name: str = "", kind: int = 0) -> ArtifactRecord | None:
        """The artifact called ``name``, else the first of ``kind``."""
        for a in self.artifacts:
            if (name and a.name == name) or (not name and a.kind == kind):
                return a
        return None

    def to_dict(self) -> dict:
        return {
            "model": self.model, "version": self.version, "publish_id": self.publish_id, "created_ns": self.created_ns,
            "step": self.step, "parent_version": self.parent_version, "metrics": dict(self.metrics),
            "artifacts": [a.to_dict() for a in self.artifacts], "tasks": [dataclasses.asdict(t) for t in self.tasks],
            "labels": dict(self.labels),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "VersionRecord":
        return cls(
            d["model"], int(d["version"]), d.get("publish_id", ""), int(d["created_ns"]), int(d.get("step", 0)),
            int(d.get("parent_version", 0)), {k: float(v) for k, v in d.get("metrics", {}).items()},
            tuple(ArtifactRecord.from_dict(a) for a in d.get("artifacts", ())),
            tuple(TaskRecord(**t) for t in d.get("tasks", ())), dict(d.get("labels", {})),
        )


@dataclasses.dataclass(frozen=True)
class Event:
    """One entry of a model's event log (VersionEvent without the synthetic RESOLVED kind).

    ``version`` is the version the event points at (0 for UNPINNED); ``record`` is set on
    PUBLISHED only (the full version, so the log alone rebuilds the registry).
    """

    sequence: int
    type: str
    model: str
    time_ns: int
    version: int = 0
    alias: str = ""
    robot_id: str = ""
    previous_version: int = 0
    reason: str = ""
    record: VersionRecord | None = None

    def to_dict(self) -> dict:
        d = {"sequence": self.sequence, "type": self.type, "time_ns": self.time_ns, "version": self.version}
        for field in ("alias", "robot_id", "reason"):
            if getattr(self, field):
                d[field] = getattr(self, field)
        if self.previous_version:
            d["previous_version"] = self.previous_version
        if self.record is not None:
            d["record"] = self.record.to_dict()
        return d

    @classmethod
    def from_dict(cls, model: str, d: Mapping) -> "Event":
        if d["type"] not in EVENT_TYPES:
            raise ValueError(f"unknown event type {d['type']!r}")
        record = VersionRecord.from_dict(d["record"]) if "record" in d else None
        return cls(int(d["sequence"]), d["type"], model, int(d["time_ns"]), int(d.get("version", 0)), d.get("alias", ""),
                   d.get("robot_id", ""), int(d.get("previous_version", 0)), d.get("reason", ""), record)


def encode_entry(events: list[Event]) -> bytes:
    return dumps({"events": [e.to_dict() for e in events]})


def decode_entry(model: str, data: bytes) -> list[Event]:
    return [Event.from_dict(model, d) for d in json.loads(data)["events"]]
