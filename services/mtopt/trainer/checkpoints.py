"""Durable training checkpoints in the object store (local directory or S3), written atomically.

Layout under ``trainer/checkpoints/`` (see docs/trainer_bellman.md)::

    trainer/checkpoints/slot-0.pt, slot-1.pt, ...   torch.save of the full training state
    trainer/checkpoints/LATEST.json                 {"key", "step", "sha256", "size", "time"}

A checkpoint is written to the slot the pointer does not name, then the pointer is replaced
(each object write is atomic), so a crash at any moment leaves LATEST naming a complete
checkpoint. Slots are reused in turn: storage stays bounded without deleting objects.

Usage::

    store = CheckpointStore(LocalDirObjects(Path("data/trainer")))
    info = store.save(state_bytes, step=1000)       # CheckpointInfo(key, step, uri)
    loaded = store.load()                           # (CheckpointInfo, bytes) or None
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time

from mtopt.model_registry.objects import ObjectStore

PREFIX = "trainer/checkpoints/"
POINTER = PREFIX + "LATEST.json"


class CheckpointCorruptError(RuntimeError):
    """LATEST.json names a checkpoint whose bytes do not match its recorded SHA-256."""


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    key: str
    step: int
    uri: str


class CheckpointStore:
    """Writes and reads checkpoints under trainer/checkpoints/ (blocking; thread-safe)."""

    def __init__(self, objects: ObjectStore, slots: int = 2):
        if slots < 2:
            raise ValueError("CheckpointStore needs at least 2 slots (one is always the live checkpoint)")
        self.objects, self.slots = objects, slots
        self._lock = threading.Lock()

    def _pointer(self) -> dict | None:
        raw = self.objects.get(POINTER)
        return None if raw is None else json.loads(raw)

    def save(self, data: bytes, step: int) -> CheckpointInfo:
        """Stores ``data`` in the next slot, then points LATEST.json at it."""
        with self._lock:
            current = self._pointer()
            last_slot = int(current["slot"]) if current else -1
            slot = (last_slot + 1) % self.slots
            key = f"{PREFIX}slot-{slot}.pt"
            self.objects.put(key, data)
            pointer = {"key": key, "slot": slot, "step": int(step), "size": len(data),
                       "sha256": hashlib.sha256(data).hexdigest(), "time": time.time()}
            self.objects.put(POINTER, json.dumps(pointer, sort_keys=True).encode())
            return CheckpointInfo(key, int(step), self.objects.uri(key))

    def load(self) -> tuple[CheckpointInfo, bytes] | None:
        """The checkpoint LATEST.json names, or None when there is none yet."""
        pointer = self._pointer()
        if pointer is None:
            return None
        data = self.objects.get(pointer["key"])
        if data is None or hashlib.sha256(data).hexdigest() != pointer["sha256"]:
            raise CheckpointCorruptError(f"checkpoint {pointer['key']} does not match {POINTER} (sha256 {pointer['sha256']}); "
                                         "restore the object or remove the pointer to start from the registry's latest weights")
        return CheckpointInfo(pointer["key"], int(pointer["step"]), self.objects.uri(pointer["key"])), data
