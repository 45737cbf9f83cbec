"""The Learner: one gradient step of the Q-function on (s, a, T, target) batches."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from mtopt.core.bellman import TargetNetworks, bellman_targets, q_loss
from mtopt.core.config import MTOptConfig
from mtopt.core.networks import QNetwork
from mtopt.core.replay import Batch


@dataclasses.dataclass
class TargetBatch:
    """What a Bellman worker hands to the trainer: states, actions, tasks and their targets."""

    images: torch.Tensor  # (B, H, W, 3) uint8
    states: torch.Tensor  # (B, S)
    actions: torch.Tensor  # (B, A)
    tasks: torch.Tensor  # (B,) int64
    targets: torch.Tensor  # (B,) float32 in [0, 1]


def to_tensors(batch: Batch, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return {
        "images": torch.from_numpy(batch.images).to(device),
        "states": torch.from_numpy(batch.states).to(device),
        "actions": torch.from_numpy(batch.actions).to(device),
        "next_images": torch.from_numpy(batch.next_images).to(device),
        "next_states": torch.from_numpy(batch.next_states).to(device),
        "tasks": torch.from_numpy(batch.tasks).to(device),
        "rewards": torch.from_numpy(batch.rewards).to(device),
        "dones": torch.from_numpy(batch.dones).to(device),
    }


class TargetComputer:
    """Turns replay batches into TargetBatches with the target networks (a Bellman worker's job)."""

    def __init__(self, targets: TargetNetworks, config: MTOptConfig, seed: int = 0, device: str = "cpu"):
        self.targets, self.config, self.device = targets, config, device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, batch: Batch) -> TargetBatch:
        t = to_tensors(batch, self.device)
        y = bellman_targets(
            self.targets.q_t1, self.targets.q_t2, t["next_images"], t["next_states"], t["tasks"],
            t["rewards"], t["dones"], self.config, self.generator,
        )
        return TargetBatch(t["images"], t["states"], t["actions"], t["tasks"], y.clamp(0.0, 1.0))


class Learner:
    """Owns the online Q-network and its optimiser.

    Usage::

        learner = Learner(QNetwork(catalogue.num_slots), config)
        for target_batch in stream:
            loss = learner.step(target_batch)
    """

    def __init__(self, q: QNetwork, config: MTOptConfig):
        self.q, self.config = q, config
        self.optimizer = torch.optim.Adam(q.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        self.steps = 0

    def step(self, tb: TargetBatch) -> float:
        self.q.train()
        logits = self.q(tb.images, tb.states, tb.actions[:, None, :], tb.tasks)[:, 0]
        loss = q_loss(logits, tb.targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.q.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.steps += 1
        return float(loss.detach())

    def state_dict(self) -> dict:
        return {"q": self.q.state_dict(), "optimizer": self.optimizer.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.q.load_state_dict(state["q"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)
