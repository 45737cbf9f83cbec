"""The CEM policy on a torch Q-network (the robot runs the same search on ONNX, `mtopt.onnx_policy`)."""

from __future__ import annotations

import numpy as np
import torch

from mtopt.core.cem import cem_argmax
from mtopt.core.config import MTOptConfig
from mtopt.core.networks import QNetwork
from mtopt.robot import ACTION_DIM, CEM_INITIAL_MEAN, Observation, canonical_action


class CEMPolicy:
    """argmax_a Q(s, a, T) by CEM, with epsilon-random exploration.

    Usage::

        policy = CEMPolicy(q, config, epsilon=0.1)
        action = policy(obs, task_index)
    """

    def __init__(self, q: QNetwork, config: MTOptConfig, epsilon: float = 0.0, seed: int = 0,
                 init_mean=CEM_INITIAL_MEAN):
        self.q, self.config, self.epsilon, self.init_mean = q, config, epsilon, init_mean
        self.rng = np.random.default_rng(seed)
        self.device = next(q.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def reset(self, task=None) -> None:
        pass

    @torch.no_grad()
    def batch(self, images: np.ndarray, states: np.ndarray, tasks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Greedy actions (B, A) and their Q-values (B,) for B states at once."""
        self.q.eval()
        img = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        st = torch.from_numpy(np.asarray(states, dtype=np.float32)).to(self.device)
        tk = torch.from_numpy(np.asarray(tasks, dtype=np.int64)).to(self.device)
        features = self.q.tower(img)  # once per state, shared by every CEM sample
        best, score = cem_argmax(
            lambda a: self.q.score(features, st, a, tk),
            batch=img.shape[0],
            action_dim=ACTION_DIM,
            iterations=self.config.cem_iterations,
            samples=self.config.cem_samples,
            elites=self.config.cem_elites,
            generator=self.generator,
            device=self.device,
            init_mean=self.init_mean,
        )
        return canonical_action(best.cpu().numpy()), torch.sigmoid(score).cpu().numpy()

    def __call__(self, obs: Observation, task_index: int) -> np.ndarray:
        if self.epsilon and self.rng.random() < self.epsilon:
            a = self.rng.uniform(-1, 1, ACTION_DIM).astype(np.float32)
            a[3] = 1.0 if self.rng.random() < 0.15 else -1.0
            return canonical_action(a)
        action, _ = self.batch(obs.image[None], obs.state[None], np.array([task_index]))
        return action[0]
