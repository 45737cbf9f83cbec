"""Task impersonation, per-task replay buffers and re-balanced sampling (MT-Opt Sec. IV-B).

    episode collected for task T_i
      -> impersonate: the tasks {T_k} it may train (f_orig / f_all / f_skill)
      -> success detector verdict per T_k on the final image (reward 1 or 0)
      -> buffer[T_k].success or buffer[T_k].failure (failures are kept: they define the task too)
      -> re-balanced batches: equal share per task, `success_fraction` successes inside each task

Episodes are stored once; task buffers hold references, so impersonating an episode for ten
tasks costs ten ids, not ten copies of its images.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Iterable, Mapping, Sequence

import numpy as np

from mtopt.episode import Episode
from mtopt.tasks import Task, TaskCatalogue


def impersonate(task: Task, catalogue: TaskCatalogue, mode: str) -> list[Task]:
    """The tasks an episode collected for `task` trains: f_orig, f_all or f_skill."""
    if mode == "orig":
        return [task]
    if mode == "all":
        return list(catalogue.tasks)
    if mode == "skill":
        return catalogue.tasks_in_skill(task.skill)
    raise ValueError(f"unknown impersonation mode {mode!r}; use orig, all or skill")


@dataclasses.dataclass
class Batch:
    """A batch of transitions (numpy), each for one task with its reward."""

    images: np.ndarray  # (B, H, W, 3) uint8
    states: np.ndarray  # (B, S)
    actions: np.ndarray  # (B, A)
    next_images: np.ndarray
    next_states: np.ndarray
    tasks: np.ndarray  # (B,) int64 task indices (one-hot slots)
    rewards: np.ndarray  # (B,) float32
    dones: np.ndarray  # (B,) float32
    successes: np.ndarray  # (B,) bool: the episode succeeded for that task
    episode_ids: list[str] = dataclasses.field(default_factory=list)  # source episode of each row

    def __len__(self) -> int:
        return int(self.tasks.shape[0])


def rebalanced_counts(
    available: Mapping[int, tuple[int, int]], batch_size: int, success_fraction: float, rng: np.random.Generator
) -> dict[int, tuple[int, int]]:
    """How many (successes, failures) to draw per task for one batch.

    `available` maps task index -> (number of success episodes, number of failure episodes).
    Tasks with any data share the batch equally (remainder spread at random). Inside a task,
    round(share * success_fraction) come from successes; when one side is empty the other fills.
    """
    tasks = [k for k, (s, f) in available.items() if s + f > 0]
    if not tasks:
        return {}
    per, rem = divmod(batch_size, len(tasks))
    extra = set(rng.choice(tasks, size=rem, replace=False).tolist()) if rem else set()
    out = {}
    for k in tasks:
        n = per + (1 if k in extra else 0)
        s_avail, f_avail = available[k]
        n_s = int(np.floor(n * success_fraction + rng.random()))  # unbiased rounding
        if s_avail == 0:
            n_s = 0
        elif f_avail == 0:
            n_s = n
        out[k] = (n_s, n - n_s)
    return out


HELD_EPISODE_OVERHEAD_BYTES = 1536
"""Memory a buffered episode holds beyond its arrays: the Episode object, its array headers and
metadata, and the buffers' bookkeeping (dict and list entries, labels). ~1.5 KiB by tracemalloc
for simulator episodes decoded as log_replay decodes them (tests/services/test_log_replay_buffer.py
measures it); about 4% of a 64x64 episode of 4 steps."""


def held_bytes(episode: Episode) -> int:
    """What the byte budget counts for one buffered episode: its arrays plus the objects around them."""
    return episode.nbytes + HELD_EPISODE_OVERHEAD_BYTES


class ReplayBuffer:
    """Per-task success/failure buffers over a bounded episode store.

    Usage::

        buffer = ReplayBuffer(catalogue, capacity_bytes=2 << 30)
        buffer.add(episode, {"lift-red": True, "lift-any": True, "lift-blue": False})
        batch = buffer.sample(128, rng, rebalance=True, success_fraction=0.5)
    """

    def __init__(self, catalogue: TaskCatalogue, capacity_bytes: int = 2 << 30, step_penalty: float = 0.0):
        self.catalogue = catalogue
        self.capacity_bytes = capacity_bytes
        self.step_penalty = step_penalty
        self.episodes: "collections.OrderedDict[str, Episode]" = collections.OrderedDict()
        self.labels: dict[str, dict[int, bool]] = {}
        self.buffers: dict[int, tuple[list[str], list[str]]] = {t.index: ([], []) for t in catalogue}
        self.nbytes = 0

    # -- writing -----------------------------------------------------------------------------
    def add(self, episode: Episode, outcomes: Mapping[str, bool]) -> None:
        """Stores `episode` once and references it from each task in `outcomes` (task -> success)."""
        if episode.episode_id in self.episodes:
            self.relabel(episode.episode_id, outcomes)
            return
        for name in outcomes:
            self.catalogue[name]  # raises a clear KeyError on an unknown task
        self.episodes[episode.episode_id] = episode
        self.nbytes += held_bytes(episode)
        self._link(episode.episode_id, outcomes)
        while self.nbytes > self.capacity_bytes and len(self.episodes) > 1:
            self._evict_oldest()

    def relabel(self, episode_id: str, outcomes: Mapping[str, bool]) -> None:
        """Replaces an episode's task outcomes (after a new success detector version)."""
        if episode_id not in self.episodes:
            raise KeyError(f"episode {episode_id!r} is not in the buffer (never added, or evicted)")
        for name in outcomes:
            self.catalogue[name]  # validate every name before touching the old outcomes
        self._unlink(episode_id)
        self._link(episode_id, outcomes)

    def relabel_many(self, outcomes: Mapping[str, Mapping[str, bool]]) -> None:
        """`relabel` for many episodes at once (a new SD version relabels the whole buffer).

        Validates everything first, so an unknown episode or task changes nothing; then rebuilds
        the task lists in insertion order, which keeps the oldest episodes first for eviction.
        """
        for episode_id, out in outcomes.items():
            if episode_id not in self.episodes:
                raise KeyError(f"episode {episode_id!r} is not in the buffer (never added, or evicted)")
            for name in out:
                self.catalogue[name]
        for episode_id, out in outcomes.items():
            self.labels[episode_id] = {self.catalogue[n].index: bool(v) for n, v in out.items()}
        self.buffers = {k: ([], []) for k in self.buffers}
        for episode_id in self.episodes:
            for k, ok in self.labels.get(episode_id, {}).items():
                self.buffers.setdefault(k, ([], []))[0 if ok else 1].append(episode_id)

    def _link(self, episode_id: str, outcomes: Mapping[str, bool]) -> None:
        labels = {self.catalogue[n].index: bool(v) for n, v in outcomes.items()}
        self.labels[episode_id] = labels
        for k, ok in labels.items():
            self.buffers.setdefault(k, ([], []))[0 if ok else 1].append(episode_id)

    def _unlink(self, episode_id: str) -> None:
        for k, ok in self.labels.pop(episode_id, {}).items():
            self.buffers[k][0 if ok else 1].remove(episode_id)

    def _evict_oldest(self) -> None:
        episode_id, episode = self.episodes.popitem(last=False)
        self.nbytes -= held_bytes(episode)
        for k, ok in self.labels.pop(episode_id, {}).items():
            lst = self.buffers[k][0 if ok else 1]
            # the oldest episode sits at (or near) the front of every list it is in
            lst.remove(episode_id)

    def add_task(self, task: Task) -> None:
        """Makes room for a new task (growing the catalogue) without touching existing buffers."""
        self.catalogue = self.catalogue.extended([task])
        self.buffers.setdefault(task.index, ([], []))

    # -- reading -----------------------------------------------------------------------------
    def sizes(self) -> dict[str, tuple[int, int]]:
        """task name -> (success episodes, failure episodes)."""
        return {t.name: (len(self.buffers[t.index][0]), len(self.buffers[t.index][1])) for t in self.catalogue}

    def __len__(self) -> int:
        return len(self.episodes)

    def sample(
        self,
        batch_size: int,
        rng: np.random.Generator,
        rebalance: bool = True,
        success_fraction: float = 0.5,
        tasks: Iterable[int] | None = None,
    ) -> Batch:
        """A batch of transitions; re-balanced across tasks and outcomes unless `rebalance=False`.

        Without re-balancing, every (task, episode) reference is equally likely, so tasks and
        outcomes appear in the skewed proportions of the data.
        """
        keys = list(tasks) if tasks is not None else [t.index for t in self.catalogue]
        picks: list[tuple[int, str, bool]] = []
        if rebalance:
            avail = {k: (len(self.buffers[k][0]), len(self.buffers[k][1])) for k in keys}
            for k, (n_s, n_f) in rebalanced_counts(avail, batch_size, success_fraction, rng).items():
                s_ids, f_ids = self.buffers[k]
                picks += [(k, s_ids[i], True) for i in rng.integers(len(s_ids), size=n_s)] if n_s else []
                picks += [(k, f_ids[i], False) for i in rng.integers(len(f_ids), size=n_f)] if n_f else []
        else:
            sizes = np.array([len(self.buffers[k][0]) + len(self.buffers[k][1]) for k in keys], dtype=np.int64)
            cum = np.cumsum(sizes)
            total = int(cum[-1]) if len(cum) else 0
            if total:
                for j in rng.integers(total, size=batch_size):
                    ti = int(np.searchsorted(cum, j, side="right"))
                    k = keys[ti]
                    r = int(j - (cum[ti - 1] if ti else 0))
                    s_ids, f_ids = self.buffers[k]
                    picks.append((k, s_ids[r], True) if r < len(s_ids) else (k, f_ids[r - len(s_ids)], False))
        if not picks:
            raise LookupError("the replay buffer has no episodes for the requested tasks yet")
        return self._gather(picks, rng)

    def _gather(self, picks: Sequence[tuple[int, str, bool]], rng: np.random.Generator) -> Batch:
        eps = [self.episodes[e] for _, e, _ in picks]
        steps = np.array([rng.integers(ep.num_steps) for ep in eps])
        last = np.array([ep.num_steps - 1 for ep in eps])
        dones = (steps == last).astype(np.float32)
        ok = np.array([s for _, _, s in picks])
        rewards = np.where(dones > 0, ok.astype(np.float32), -self.step_penalty).astype(np.float32)
        return Batch(
            images=np.stack([ep.images[t] for ep, t in zip(eps, steps)]),
            states=np.stack([ep.states[t] for ep, t in zip(eps, steps)]),
            actions=np.stack([ep.actions[t] for ep, t in zip(eps, steps)]),
            next_images=np.stack([ep.images[t + 1] for ep, t in zip(eps, steps)]),
            next_states=np.stack([ep.states[t + 1] for ep, t in zip(eps, steps)]),
            tasks=np.array([k for k, _, _ in picks], dtype=np.int64),
            rewards=rewards,
            dones=dones,
            successes=ok,
            episode_ids=[e for _, e, _ in picks],
        )
