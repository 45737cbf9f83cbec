"""Durable state of success_detector in an object store (a local directory or a MinIO bucket).

Layout (all keys under ``success_detector/``; documented in docs/success_detector.md)::

    success_detector/examples/<task>/<positive|negative>/<h>.pb   one LabelledExample (image included)
    success_detector/versions/<version:010d>.json                 one SD version's record
    success_detector/requests/<sha256(request_id)>.json           {"version": n}: TrainVersion idempotency

``h`` is the SHA-256 of the example_id (ids may hold "/" and any character). Every example is
created with put-if-absent, so a re-added id never overwrites anything; the task and label in
the key let the service rebuild its counts at start by listing alone.

Usage (blocking calls: the server runs them in a thread pool)::

    store = SdStorage(objects)
    index = store.load_index()                        # {h: (task, label)}
    created = store.put_example(h, task, label, data)
    data = store.get_example(h, task, label)
    n = store.allocate_version(record_json_for)       # next free version number, record created
    store.save_version(record); records = store.load_versions()
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Callable

from mtopt.model_registry.objects import ObjectStore

ROOT = "success_detector/"
EXAMPLES = ROOT + "examples/"
VERSIONS = ROOT + "versions/"
REQUESTS = ROOT + "requests/"
LABELS = {True: "positive", False: "negative"}
_LABEL_OF = {v: k for k, v in LABELS.items()}

PENDING, TRAINING, READY, FAILED = "PENDING", "TRAINING", "READY", "FAILED"
FINAL_STATES = (READY, FAILED)


def example_hash(example_id: str) -> str:
    return hashlib.sha256(example_id.encode()).hexdigest()


def example_key(h: str, task: str, success: bool) -> str:
    return f"{EXAMPLES}{task}/{LABELS[success]}/{h}.pb"


def version_key(version: int) -> str:
    return f"{VERSIONS}{version:010d}.json"


def request_key(request_id: str) -> str:
    return f"{REQUESTS}{hashlib.sha256(request_id.encode()).hexdigest()}.json"


@dataclasses.dataclass
class VersionRecord:
    """One SD version as stored in ``success_detector/versions/`` (times in Unix seconds)."""

    version: int
    state: str = PENDING
    request_id: str = ""
    tasks: list[str] = dataclasses.field(default_factory=list)
    slots: list[int] = dataclasses.field(default_factory=list)
    """One-hot slot of each entry of ``tasks``."""
    base_version: int = 0
    train_steps: int = 0
    promote: bool = False
    num_examples: int = 0
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    created_time: float = 0.0
    updated_time: float = 0.0
    finished_time: float = 0.0
    error: str = ""
    registry_version: int = 0
    focus_source: str = ""
    focus_share: float = 0.0
    """Examples of ``focus_source`` fill this share of every training batch (0: all drawn equally)."""

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "VersionRecord":
        raw = json.loads(data)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


class SdStorage:
    """Examples and version records of success_detector over an `ObjectStore`."""

    def __init__(self, objects: ObjectStore):
        self.objects = objects

    def ping(self) -> None:
        self.objects.ping()

    def close(self) -> None:
        self.objects.close()

    # -- examples --------------------------------------------------------------------------------
    def _list_all(self, prefix: str) -> list[str]:
        out, after = [], ""
        while True:
            keys = self.objects.list_keys(prefix, start_after=after, limit=1000)
            out += keys
            if len(keys) < 1000:
                return out
            after = keys[-1]

    def load_index(self) -> dict[str, tuple[str, bool]]:
        """{h: (task, success)} of every stored example, by listing (no example is read)."""
        index: dict[str, tuple[str, bool]] = {}
        for task in self.objects.list_dirs(EXAMPLES):
            for label in self.objects.list_dirs(f"{EXAMPLES}{task}/"):
                if label not in _LABEL_OF:
                    continue
                for key in self._list_all(f"{EXAMPLES}{task}/{label}/"):
                    name = key.rsplit("/", 1)[-1]
                    if name.endswith(".pb"):
                        index.setdefault(name[:-3], (task, _LABEL_OF[label]))
        return index

    def put_example(self, h: str, task: str, success: bool, data: bytes) -> bool:
        """Stores one serialized LabelledExample; False if it was already stored."""
        return self.objects.put_if_absent(example_key(h, task, success), data)

    def get_example(self, h: str, task: str, success: bool) -> bytes | None:
        return self.objects.get(example_key(h, task, success))

    # -- versions --------------------------------------------------------------------------------
    def load_versions(self) -> dict[int, VersionRecord]:
        out = {}
        for key in self._list_all(VERSIONS):
            data = self.objects.get(key)
            if data:
                record = VersionRecord.from_json(data)
                out[record.version] = record
        return out

    def get_version(self, version: int) -> VersionRecord | None:
        data = self.objects.get(version_key(version))
        return VersionRecord.from_json(data) if data else None

    def allocate_version(self, first: int, make: Callable[[int], VersionRecord]) -> VersionRecord:
        """Creates the record of the lowest free version number >= ``first`` (atomic across replicas)."""
        n = max(1, first)
        while True:
            record = make(n)
            if self.objects.put_if_absent(version_key(n), record.to_json()):
                return record
            n += 1

    def save_version(self, record: VersionRecord) -> None:
        record.updated_time = time.time()
        self.objects.put(version_key(record.version), record.to_json())

    def claim_request(self, request_id: str, version: int) -> int:
        """Binds ``request_id`` to ``version`` unless it is bound already; returns the bound version."""
        key = request_key(request_id)
        if self.objects.put_if_absent(key, json.dumps({"version": version, "request_id": request_id}).encode()):
            return version
        data = self.objects.get(key)
        return int(json.loads(data)["version"]) if data else version

    def lookup_request(self, request_id: str) -> int | None:
        data = self.objects.get(request_key(request_id))
        return int(json.loads(data)["version"]) if data else None
