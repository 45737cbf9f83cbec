"""The service's replay buffers: `mtopt.core.replay.ReplayBuffer` behind a lock, with running
per-task counts and the store cursor of every buffered episode.

Episodes are held once, decoded (uint8 images), and referenced from every task they were
impersonated for; the byte budget evicts the oldest. All methods are thread-safe: the server
adds and relabels from its I/O threads while SampleBatches streams sample in others.

Usage::

    cache = ReplayCache(catalogue, capacity_bytes=1 << 30)
    cache.add([(episode, {"lift-red": True, "lift-any": True}, previous_cursor)])
    batch = cache.sample(256, rng, success_fraction=0.5, task_indices=[0, 1])   # None: too little data
    cache.refill_cursor()      # where a restart must re-read the store from
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Iterable, Mapping, Sequence

import numpy as np

from mtopt.core.replay import Batch, ReplayBuffer, held_bytes
from mtopt.episode import Episode
from mtopt.tasks import TaskCatalogue


@dataclasses.dataclass
class TaskCounts:
    """Buffer contents of one task (the fields of TaskBufferStats)."""

    success_transitions: int = 0
    failure_transitions: int = 0
    success_episodes: int = 0
    failure_episodes: int = 0
    bytes: int = 0

    @property
    def transitions(self) -> int:
        return self.success_transitions + self.failure_transitions


class CountingReplayBuffer(ReplayBuffer):
    """A ReplayBuffer that keeps per-task counts up to date as episodes are linked, relabelled
    and evicted (so stats and the sampling gate cost O(tasks), not O(buffer))."""

    def __init__(self, catalogue: TaskCatalogue, capacity_bytes: int, step_penalty: float = 0.0):
        super().__init__(catalogue, capacity_bytes, step_penalty)
        self.counts: dict[int, TaskCounts] = collections.defaultdict(TaskCounts)

    def _count(self, episode_id: str, sign: int) -> None:
        ep = self.episodes[episode_id]
        for k, ok in self.labels.get(episode_id, {}).items():
            c = self.counts[k]
            if ok:
                c.success_transitions += sign * ep.num_steps
                c.success_episodes += sign
            else:
                c.failure_transitions += sign * ep.num_steps
                c.failure_episodes += sign
            c.bytes += sign * held_bytes(ep)

    def _link(self, episode_id: str, outcomes: Mapping[str, bool]) -> None:
        super()._link(episode_id, outcomes)
        self._count(episode_id, +1)

    def _unlink(self, episode_id: str) -> None:
        self._count(episode_id, -1)
        super()._unlink(episode_id)

    def _evict_oldest(self) -> None:
        self._count(next(iter(self.episodes)), -1)
        super()._evict_oldest()


class ReplayCache:
    """Thread-safe buffers plus the cursor bookkeeping a restart needs."""

    def __init__(self, catalogue: TaskCatalogue, capacity_bytes: int, step_penalty: float = 0.0):
        self.catalogue = catalogue
        self._buffer = CountingReplayBuffer(catalogue, capacity_bytes, step_penalty)
        self._lock = threading.Lock()
        # episode id -> the store cursor just before it, in insertion (= cursor) order
        self._prev_cursor: "collections.OrderedDict[str, str]" = collections.OrderedDict()
        self._task_of: dict[str, str] = {}

    @property
    def capacity_bytes(self) -> int:
        return self._buffer.capacity_bytes

    # -- writing -----------------------------------------------------------------------------
    def add(self, items: Iterable[tuple[Episode, Mapping[str, bool], str]]) -> None:
        """Adds (episode, task -> success, cursor before the episode) in store order."""
        with self._lock:
            for episode, outcomes, prev_cursor in items:
                if episode.episode_id not in self._buffer.episodes:
                    self._prev_cursor[episode.episode_id] = prev_cursor
                    self._task_of[episode.episode_id] = episode.task
                self._buffer.add(episode, outcomes)
            self._forget_evicted()

    def _forget_evicted(self) -> None:
        while self._prev_cursor:
            oldest = next(iter(self._prev_cursor))
            if oldest in self._buffer.episodes:
                return
            self._prev_cursor.popitem(last=False)
            self._task_of.pop(oldest, None)

    def relabel(self, episode_id: str, outcomes: Mapping[str, bool]) -> bool:
        """Replaces the outcomes of ``outcomes``' tasks (others keep theirs); False if evicted."""
        with self._lock:
            if episode_id not in self._buffer.episodes:
                return False
            merged = {self.catalogue.by_index(k).name: ok for k, ok in self._buffer.labels.get(episode_id, {}).items()}
            merged.update(outcomes)
            self._buffer.relabel(episode_id, merged)
            return True

    # -- reading -----------------------------------------------------------------------------
    def refill_cursor(self) -> str | None:
        """The store cursor after which the oldest buffered episode comes; None when empty."""
        with self._lock:
            return next(iter(self._prev_cursor.values())) if self._prev_cursor else None

    def episode_ids(self) -> list[str]:
        """Buffered episodes, oldest first."""
        with self._lock:
            return list(self._buffer.episodes)

    def final_images(self, episode_ids: Sequence[str]) -> list[tuple[str, str, np.ndarray]]:
        """(episode id, collecting task, final image) of those still buffered."""
        with self._lock:
            return [(e, self._task_of[e], self._buffer.episodes[e].final_image) for e in episode_ids if e in self._buffer.episodes]

    def outcomes(self, episode_id: str) -> dict[str, bool]:
        """task name -> success of a buffered episode ({} if unknown)."""
        with self._lock:
            return {self.catalogue.by_index(k).name: ok for k, ok in self._buffer.labels.get(episode_id, {}).items()}

    def __len__(self) -> int:
        with self._lock:
            return len(self._buffer)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._buffer.nbytes

    def counts(self) -> dict[str, TaskCounts]:
        """task name -> a copy of its counts, for every task of the catalogue."""
        with self._lock:
            return {t.name: dataclasses.replace(self._buffer.counts[t.index]) for t in self.catalogue}

    def eligible(self, task_indices: Sequence[int], min_per_task: int) -> tuple[list[int], int]:
        """(tasks holding >= min_per_task transitions, their transitions together)."""
        with self._lock:
            keys = [k for k in task_indices if self._buffer.counts[k].transitions >= min_per_task]
            return keys, sum(self._buffer.counts[k].transitions for k in keys)

    def sample(self, batch_size: int, rng: np.random.Generator, success_fraction: float, task_indices: Sequence[int]) -> Batch:
        """A re-balanced batch over ``task_indices`` (LookupError if they hold nothing)."""
        with self._lock:
            return self._buffer.sample(batch_size, rng, rebalance=True, success_fraction=success_fraction, tasks=task_indices)
