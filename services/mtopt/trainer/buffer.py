"""The trainer's bounded train buffer of (s, a, T, target) rows, with back-pressure.

Design (targets stay fresh, memory stays bounded):

- Rows live in preallocated slots (``capacity`` rows); a pushed batch either fits whole or is
  refused (``offer`` returns accepted=False and the caller answers with a retry hint). Nothing
  grows without bound, and a refused batch costs the worker one wait, not a lost batch.
- Each SGD step samples ``batch_size`` live rows uniformly; every row carries a use counter and
  is dropped after ``max_row_uses`` samples. Rows therefore leave the buffer at a steady rate
  (batch_size / max_row_uses rows per step), and a target computed from an old Qt1 is never
  reused indefinitely; with back-pressure the buffer holds at most ``capacity * max_row_uses /
  batch_size`` steps' worth of targets.
- The ids of recently accepted batches are remembered (``dedup_memory``, oldest forgotten
  first), so a worker retrying after a lost acknowledgement does not store its batch twice.

Thread-safe: PushTargets (event loop thread) offers, the training thread samples.

Usage::

    buffer = TrainBuffer(capacity=8192, image_shape=(64, 64, 3), state_dim=2, action_dim=4)
    result = buffer.offer("worker-a/17", rows)          # OfferResult(accepted, duplicate, size)
    rows, waited = buffer.wait_and_sample(128, min_rows=512, rng=rng, timeout_s=1.0)  # rows None: starved
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time

import numpy as np

FIELDS = ("images", "states", "actions", "tasks", "targets")


@dataclasses.dataclass(frozen=True)
class OfferResult:
    accepted: bool
    duplicate: bool
    size: int
    """Rows in the buffer after the call."""


class TrainBuffer:
    """Bounded, de-duplicating store of target rows; see the module docstring."""

    def __init__(self, capacity: int, image_shape: tuple[int, int, int], state_dim: int, action_dim: int, *,
                 max_row_uses: int = 4, dedup_memory: int = 100_000):
        self.capacity, self.max_row_uses, self.dedup_memory = capacity, max_row_uses, dedup_memory
        self.images = np.zeros((capacity, *image_shape), dtype=np.uint8)
        self.states = np.zeros((capacity, state_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, action_dim), dtype=np.float32)
        self.tasks = np.zeros(capacity, dtype=np.int64)
        self.targets = np.zeros(capacity, dtype=np.float32)
        self.uses = np.zeros(capacity, dtype=np.int32)
        self.live = np.zeros(capacity, dtype=bool)
        self._free = list(range(capacity - 1, -1, -1))  # a stack of free slots
        self._recent: "collections.OrderedDict[str, None]" = collections.OrderedDict()
        self._cond = threading.Condition()
        self.rows_accepted = 0
        self.rows_consumed = 0
        self._drain = collections.deque(maxlen=64)  # (time, rows freed) for the retry hint

    # -- writing -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.capacity - len(self._free)

    def offer(self, batch_id: str, rows: dict[str, np.ndarray]) -> OfferResult:
        """Stores a validated batch whole, or refuses it when it does not fit (back-pressure)."""
        n = int(rows["targets"].shape[0])
        with self._cond:
            if batch_id in self._recent:
                self._recent.move_to_end(batch_id)
                return OfferResult(True, True, len(self))
            if n > len(self._free):
                return OfferResult(False, False, len(self))
            slots = np.array([self._free.pop() for _ in range(n)], dtype=np.int64)
            for name in FIELDS:
                getattr(self, name)[slots] = rows[name]
            self.uses[slots] = 0
            self.live[slots] = True
            self._recent[batch_id] = None
            while len(self._recent) > self.dedup_memory:
                self._recent.popitem(last=False)
            self.rows_accepted += n
            self._cond.notify_all()
            return OfferResult(True, False, len(self))

    def clear(self) -> None:
        with self._cond:
            self.live[:] = False
            self._free = list(range(self.capacity - 1, -1, -1))

    # -- reading -------------------------------------------------------------------------------
    def wait_and_sample(self, batch_size: int, min_rows: int, rng: np.random.Generator,
                        timeout_s: float) -> tuple[dict[str, np.ndarray] | None, float]:
        """(``batch_size`` rows (copies), seconds waited): waits until at least
        max(min_rows, batch_size) rows are buffered; rows is None if that did not happen within
        ``timeout_s``. The wait is starvation time."""
        need = max(min_rows, batch_size)
        with self._cond:
            waited = 0.0
            if len(self) < need:
                t0 = time.monotonic()
                ok = self._cond.wait_for(lambda: len(self) >= need, timeout_s)
                waited = time.monotonic() - t0
                if not ok:
                    return None, waited
            live = np.flatnonzero(self.live)
            slots = rng.choice(live, size=batch_size, replace=False)
            out = {name: getattr(self, name)[slots].copy() for name in FIELDS}
            self.uses[slots] += 1
            spent = slots[self.uses[slots] >= self.max_row_uses]
            if spent.size:
                self.live[spent] = False
                self._free.extend(int(s) for s in spent)
                self.rows_consumed += int(spent.size)
                self._drain.append((time.monotonic(), int(spent.size)))
            return out, waited

    def retry_after_ms(self, rows_needed: int, floor_ms: int = 20, ceiling_ms: int = 5000) -> int:
        """How long a refused batch of ``rows_needed`` rows should wait: the time the recent
        drain rate needs to free that many slots (ceiling when training is not draining)."""
        with self._cond:
            missing = rows_needed - len(self._free)
            now = time.monotonic()
            recent = [(t, n) for t, n in self._drain if now - t < 10.0]
        if missing <= 0:
            return floor_ms
        if len(recent) < 2:
            return min(ceiling_ms, max(floor_ms, 200))
        span = max(now - recent[0][0], 1e-3)
        rate = sum(n for _, n in recent) / span  # rows freed per second
        return int(min(ceiling_ms, max(floor_ms, 1000.0 * missing / max(rate, 1e-6))))
