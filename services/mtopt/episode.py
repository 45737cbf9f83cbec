"""Episodes as the robot records them (no torch: this module runs on robots)."""

from __future__ import annotations

import dataclasses
import time
import uuid

import numpy as np

from mtopt.robot import ACTION_DIM, STATE_DIM, Observation


@dataclasses.dataclass
class Episode:
    """One attempt at one task: T actions and the T + 1 observations around them.

    ``images[t]``/``states[t]`` are observed before ``actions[t]``; ``images[-1]`` is the final
    image the success detector judges. The last transition is terminal (TERMINATE or time-out).
    """

    episode_id: str
    robot_id: str
    task: str
    images: np.ndarray  # (T+1, H, W, 3) uint8
    states: np.ndarray  # (T+1, STATE_DIM) float32
    actions: np.ndarray  # (T, ACTION_DIM) float32
    policy_version: int = 0
    start_time: float = 0.0
    end_time: float = 0.0
    metadata: dict = dataclasses.field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0])

    @property
    def final_image(self) -> np.ndarray:
        return self.images[-1]

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes + self.states.nbytes + self.actions.nbytes)

    def validate(self) -> None:
        """Raises ValueError when the arrays do not form a well-shaped episode."""
        t = self.actions.shape[0] if self.actions.ndim == 2 else -1
        if t < 1 or self.actions.shape[1] != ACTION_DIM:
            raise ValueError(f"actions must have shape (T>=1, {ACTION_DIM}), got {self.actions.shape}")
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[0] != t + 1 or self.images.shape[3] != 3:
            raise ValueError(f"images must be uint8 (T+1={t + 1}, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if self.states.shape != (t + 1, STATE_DIM):
            raise ValueError(f"states must have shape ({t + 1}, {STATE_DIM}), got {self.states.shape}")
        if not (np.all(np.isfinite(self.actions)) and np.all(np.abs(self.actions) <= 1.0 + 1e-6)):
            raise ValueError("actions must be finite and within [-1, 1]")
        if not np.all(np.isfinite(self.states)):
            raise ValueError("state features must be finite")


class EpisodeWriter:
    """Records one episode step by step.

    Usage::

        writer = EpisodeWriter(robot_id="sim-0", task="lift-red", policy_version=3)
        writer.observe(obs)
        while ...:
            writer.act(action); obs = robot.act(action); writer.observe(obs)
        episode = writer.finish()
    """

    def __init__(self, robot_id: str, task: str, policy_version: int = 0, episode_id: str | None = None):
        self.robot_id, self.task, self.policy_version = robot_id, task, policy_version
        self.episode_id = episode_id or uuid.uuid4().hex
        self._images: list[np.ndarray] = []
        self._states: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._start = time.time()

    def observe(self, obs: Observation) -> None:
        if len(self._images) != len(self._actions):
            raise RuntimeError("observe() called twice without act() in between")
        self._images.append(obs.image)
        self._states.append(obs.state)

    def act(self, action: np.ndarray) -> None:
        if len(self._images) != len(self._actions) + 1:
            raise RuntimeError("act() must follow observe()")
        self._actions.append(np.asarray(action, dtype=np.float32))

    def finish(self) -> Episode:
        if not self._actions or len(self._images) != len(self._actions) + 1:
            raise RuntimeError("an episode needs at least one action and a final observation")
        return Episode(
            episode_id=self.episode_id,
            robot_id=self.robot_id,
            task=self.task,
            images=np.stack(self._images),
            states=np.stack(self._states).astype(np.float32),
            actions=np.stack(self._actions),
            policy_version=self.policy_version,
            start_time=self._start,
            end_time=time.time(),
        )
