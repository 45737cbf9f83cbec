"""Lock-step episode collection on several robots at once, with one batched policy call per step.

Used by the experiment runner for bootstrapping, on-policy collection and evaluation. Robots
that finish an episode while holding an object may continue straight into a place/present task
without a reset (task sequencing: pick, then place), as the paper does for long tasks.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Callable, Sequence

import numpy as np

from mtopt.episode import Episode, EpisodeWriter
from mtopt.robot import ACTION_DIM, canonical_action
from mtopt.sim.scripted import ScriptedPolicy
from mtopt.sim.tabletop import TabletopSim
from mtopt.tasks import Task, TaskCatalogue

# (images (B,H,W,3), states (B,S), task indices (B,)) -> actions (B,A)
BatchPolicy = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass
class Collected:
    episodes: list[Episode]
    ground_truth: np.ndarray  # (num_episodes, len(catalogue)) bool, simulation only
    task_success: np.ndarray  # (num_episodes,) bool: ground truth for the episode's own task


class Fleet:
    """N simulated robots stepped in lock-step.

    Usage::

        fleet = Fleet(catalogue, num_robots=16, seed=0)
        out = fleet.collect(num_episodes=64, choose_task=..., policy=..., max_steps=6)
    """

    def __init__(self, catalogue: TaskCatalogue, num_robots: int, seed: int, sequence_probability: float = 0.0):
        self.catalogue = catalogue
        self.rng = np.random.default_rng(seed)
        self.sims = [TabletopSim(seed=int(s)) for s in self.rng.integers(1 << 31, size=num_robots)]
        self.scripted = [ScriptedPolicy(sim, np.random.default_rng(int(self.rng.integers(1 << 31)))) for sim in self.sims]
        self.sequence_probability = sequence_probability
        self.followups = [t for t in catalogue if t.goal.get("kind") in ("rest_on", "hold_over")]

    def collect(
        self,
        num_episodes: int,
        choose_task: Callable[[np.random.Generator], Task],
        policy: BatchPolicy | None,
        max_steps: int,
        epsilon: float = 0.0,
        scripted_fraction: float = 0.0,
        policy_version: int = 0,
        fresh_scenes: bool = False,
        tasks: Sequence[Task] | None = None,
    ) -> Collected:
        """Runs `num_episodes` episodes (or one per entry of `tasks`) and returns them.

        `policy=None` means scripted only. `epsilon` replaces a greedy action by a random one;
        `scripted_fraction` of episodes use the scripted policy. `fresh_scenes` resets before
        every episode (evaluation); otherwise a robot holding an object may continue with a
        follow-up task with `sequence_probability`.
        """
        queue = list(tasks) if tasks is not None else [None] * num_episodes
        episodes, gts, own = [], [], []
        n = len(self.sims)
        active: list[dict | None] = [None] * n

        def start(i: int) -> dict | None:
            if not queue:
                return None
            task = queue.pop()
            sim = self.sims[i]
            if task is None:
                holding = sim.holding
                if not fresh_scenes and holding and self.followups and self.rng.random() < self.sequence_probability:
                    task = self.followups[self.rng.integers(len(self.followups))]
                else:
                    task = choose_task(self.rng)
            if fresh_scenes or not (sim.holding and task.goal.get("kind") in ("rest_on", "hold_over")):
                sim.reset()
            scripted = policy is None or self.rng.random() < scripted_fraction
            self.scripted[i].reset(task)
            writer = EpisodeWriter(f"sim-{i}", task.name, policy_version, episode_id=uuid.UUID(int=int(self.rng.integers(1 << 62)) << 64 | len(episodes) + i).hex)
            obs = sim.observe()
            writer.observe(obs)
            return {"task": task, "writer": writer, "obs": obs, "t": 0, "scripted": scripted}

        for i in range(n):
            active[i] = start(i)
        while any(a is not None for a in active):
            idx = [i for i, a in enumerate(active) if a is not None]
            greedy = [i for i in idx if not active[i]["scripted"]]
            actions: dict[int, np.ndarray] = {}
            if greedy:
                imgs = np.stack([active[i]["obs"].image for i in greedy])
                states = np.stack([active[i]["obs"].state for i in greedy])
                tks = np.array([active[i]["task"].index for i in greedy])
                out = policy(imgs, states, tks)
                for j, i in enumerate(greedy):
                    a = out[j]
                    if epsilon and self.rng.random() < epsilon:
                        a = self.rng.uniform(-1, 1, ACTION_DIM).astype(np.float32)
                        a[3] = 1.0 if self.rng.random() < 0.15 else -1.0
                    actions[i] = canonical_action(a)
            for i in idx:
                st = active[i]
                a = actions.get(i)
                if a is None:
                    a = canonical_action(self.scripted[i](st["obs"]))
                st["t"] += 1
                st["writer"].act(a)
                st["obs"] = self.sims[i].act(a)
                st["writer"].observe(st["obs"])
                if a[3] > 0 or st["t"] >= max_steps:
                    episodes.append(st["writer"].finish())
                    gts.append([self.sims[i].success(t) for t in self.catalogue])
                    own.append(self.sims[i].success(st["task"]))
                    active[i] = start(i)
        gt = np.array(gts, dtype=bool).reshape(len(episodes), len(self.catalogue))
        return Collected(episodes, gt, np.array(own, dtype=bool))
