"""Crude scripted bootstrap policies for the simulator (QT-Opt / MT-Opt style data seeding).

They use privileged object positions (a real robot's scripted policy would use a crude heuristic
such as "descend somewhere in the bin and close"), ignore colour and shape, and add noise, so
their success rates are low for specific tasks (measured in docs/results.md).
"""

from __future__ import annotations

import numpy as np

from mtopt.robot import ACTION_DIM, Observation
from mtopt.sim.tabletop import BIN, TabletopSim
from mtopt.tasks import Task


def _action(x: float, y: float, grip: bool, terminate: bool = False) -> np.ndarray:
    return np.array(
        [np.clip(x, -1, 1), np.clip(y, -1, 1), 1.0 if grip else -1.0, 1.0 if terminate else -1.0],
        dtype=np.float32,
    )


class ScriptedPolicy:
    """Pick, place or present by script, with noise.

    Usage::

        policy = ScriptedPolicy(sim, rng)
        policy.reset(task)
        obs = sim.observe()
        while not done:
            obs = sim.act(policy(obs))
    """

    def __init__(
        self,
        sim: TabletopSim,
        rng: np.random.Generator,
        aim_probability: float = 0.6,
        grasp_noise: float = 0.1,
        place_noise: float = 0.17,
    ):
        self.sim = sim
        self.rng = rng
        self.aim_probability = aim_probability
        self.grasp_noise = grasp_noise
        self.place_noise = place_noise
        self.task: Task | None = None
        self._phase = 0

    def reset(self, task: Task) -> None:
        self.task = task
        self._phase = 0

    def _pick(self) -> np.ndarray:
        rng = self.rng
        objects = self.sim.object_positions()
        if objects and rng.random() < self.aim_probability:
            target = objects[rng.integers(len(objects))] + rng.normal(0, self.grasp_noise, 2)
        else:
            target = np.array([rng.uniform(BIN[0], BIN[2]), rng.uniform(BIN[1], BIN[3])])
        return _action(target[0], target[1], grip=True)

    def __call__(self, obs: Observation, task_index: int | None = None) -> np.ndarray:
        kind = self.task.goal.get("kind", "hold") if self.task else "hold"
        rng = self.rng
        holding = self.sim.holding
        self._phase += 1
        if self._phase > 4:
            return _action(0, 0, grip=holding, terminate=True)
        if kind == "hold":
            return self._pick() if not holding and self._phase == 1 else _action(0, 0, holding, terminate=True)
        if not holding:
            if self._phase <= 2:
                return self._pick()
            return _action(0, 0, False, terminate=True)
        if kind == "rest_on":
            if self._phase > 3:
                return _action(0, 0, True, terminate=True)
            fixture = self.sim.fixtures["plate" if rng.random() < 0.5 else "bowl"]
            target = fixture + rng.normal(0, self.place_noise, 2)
            action = _action(target[0], target[1], grip=False)
            self._phase = 4  # after releasing, terminate next step
            return action
        if kind == "hold_over":
            if self._phase > 3:
                return _action(0, 0, True, terminate=True)
            target = self.sim.fixtures["present"] + rng.normal(0, self.place_noise, 2)
            self._phase = 4
            return _action(target[0], target[1], grip=True)
        raise ValueError(f"no script for goal kind {kind!r}")


class RandomPolicy:
    """Uniform random actions; terminates with probability `terminate_probability` per step."""

    def __init__(self, rng: np.random.Generator, terminate_probability: float = 0.2):
        self.rng = rng
        self.terminate_probability = terminate_probability

    def reset(self, task: Task) -> None:
        pass

    def __call__(self, obs: Observation, task_index: int | None = None) -> np.ndarray:
        a = self.rng.uniform(-1, 1, ACTION_DIM).astype(np.float32)
        a[3] = 1.0 if self.rng.random() < self.terminate_probability else -1.0
        return a
