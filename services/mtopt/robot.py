"""The `Robot` interface: what the MT-Opt fleet needs from a robot, real or simulated.

A real robot adapter implements the same four methods as the built-in simulator, so adding a
robot to the fleet is writing one class. This module has no torch dependency: it runs on robots.

Actions are vectors of ``ACTION_DIM`` floats in [-1, 1]:

    index  name       meaning
    0      x          target gripper x on the table, -1 (left) .. 1 (right)
    1      y          target gripper y on the table, -1 (bottom) .. 1 (top)
    2      grip       > 0: close the gripper at the target (grasp, keep holding);
                      <= 0: open it at the target (release whatever is held)
    3      terminate  > 0: TERMINATE, the episode ends here and nothing moves (its canonical
                      form is TERMINATE_ACTION = (0, 0, -1, 1): position and grip are ignored)

State features are ``STATE_DIM`` floats: [gripper_closed, gripper_height] (height 1 = lifted).

Usage loop (the robot agent and the experiment runner both look like this)::

    robot = TabletopSim(seed=0)          # or MyRealRobot(...)
    obs = robot.reset()
    for t in range(max_steps):
        action = policy(obs, task_index)     # e.g. OnnxCEMPolicy, ScriptedPolicy
        next_obs = robot.act(action)
        record(obs, action)
        obs = next_obs
        if is_terminate(action):
            break
    final_image = obs.image               # what the success detector judges
    robot.close()
"""

from __future__ import annotations

import abc
import dataclasses

import numpy as np

ACTION_DIM = 4
STATE_DIM = 2
ACTION_X, ACTION_Y, ACTION_GRIP, ACTION_TERMINATE = range(ACTION_DIM)
TERMINATE_ACTION = np.array([0.0, 0.0, -1.0, 1.0], dtype=np.float32)
"""The canonical form of every TERMINATE action (`canonical_action`)."""
CEM_INITIAL_MEAN = (0.0, 0.0, 0.0, -0.7)
"""Centre of the policy's first CEM population (std 0.6 around it). Every TERMINATE action is the
same action (nothing moves), so a population centred on 0 spends half its samples on it; at
-0.7 about 12% of them terminate (8 of 64) and the rest search where to grasp or place
(docs/results.md 1l). The torch and ONNX policies and the Bellman targets all start here."""


@dataclasses.dataclass(frozen=True)
class Observation:
    image: np.ndarray
    """(H, W, 3) uint8 RGB camera image."""
    state: np.ndarray
    """(STATE_DIM,) float32 proprioceptive features: [gripper_closed, gripper_height]."""


def canonical_action(action: np.ndarray) -> np.ndarray:
    """Maps raw actions (..., ACTION_DIM) to the form the robot executes and the Q-network sees.

    Positions are clipped to [-1, 1]; the gripper and terminate commands become exactly +1 or -1,
    so two actions that do the same thing are the same vector. Every TERMINATE action becomes
    `TERMINATE_ACTION`: nothing moves, so its position and grip mean nothing, and a Q-network
    that saw them would score "terminate at the plate" like "move to the plate" and, searching
    over them, overestimate the value of stopping (docs/results.md 1m).
    """
    a = np.asarray(action, dtype=np.float32)
    out = np.empty_like(a)
    out[..., :2] = np.clip(a[..., :2], -1.0, 1.0)
    out[..., 2:] = np.where(a[..., 2:] > 0, 1.0, -1.0)
    return np.where(out[..., ACTION_TERMINATE : ACTION_TERMINATE + 1] > 0, TERMINATE_ACTION, out)


def is_terminate(action: np.ndarray) -> bool:
    return bool(np.asarray(action)[ACTION_TERMINATE] > 0)


def validate_action(action: np.ndarray) -> np.ndarray:
    """Raises ValueError on an action the robot must not execute (wrong shape, NaN, out of range)."""
    a = np.asarray(action, dtype=np.float32)
    if a.shape != (ACTION_DIM,):
        raise ValueError(f"action must have shape ({ACTION_DIM},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"action contains NaN or infinity: {a.tolist()}")
    if np.any(np.abs(a) > 1.0 + 1e-6):
        raise ValueError(f"action components must lie in [-1, 1], got {a.tolist()}")
    return a


class Robot(abc.ABC):
    """A robot the fleet can drive. Implementations: `mtopt.sim.TabletopSim`, your adapter."""

    @abc.abstractmethod
    def reset(self) -> Observation:
        """Starts a fresh scene (objects back in the bin, gripper empty) and observes it."""

    @abc.abstractmethod
    def observe(self) -> Observation:
        """The current camera image and state features, without moving."""

    @abc.abstractmethod
    def act(self, action: np.ndarray) -> Observation:
        """Executes one action (see the module docstring) and returns the next observation."""

    def close(self) -> None:
        """Releases hardware or resources. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
