"""Clipped double-Q Bellman targets, the cross-entropy loss and the two target networks.

    target = r + gamma * (1 - done) * min(Qt1, Qt2)(s', a*),   a* = CEM argmax_a' Qt1(s', a', T)

Qt1 is a slow Polyak average of the online network, Qt2 a lagged copy of Qt1 (QT-Opt).
"""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as F

from mtopt.core.cem import cem_argmax
from mtopt.core.config import MTOptConfig
from mtopt.core.networks import QNetwork
from mtopt.robot import ACTION_DIM, CEM_INITIAL_MEAN


def q_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between sigmoid(Q) and targets in [0, 1]."""
    return F.binary_cross_entropy_with_logits(logits, targets)


@torch.no_grad()
def bellman_targets(
    q_t1: QNetwork,
    q_t2: QNetwork,
    next_images: torch.Tensor,
    next_states: torch.Tensor,
    tasks: torch.Tensor,
    rewards: torch.Tensor,
    dones: torch.Tensor,
    config: MTOptConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Targets (B,) for transitions into (next_images, next_states) for `tasks`.

    Terminal transitions get exactly their reward; CEM runs only for the others, on Qt1, with
    each next state's image tower computed once and shared by all CEM samples.
    """
    targets = rewards.to(torch.float32).clone()
    live = (dones < 0.5).nonzero(as_tuple=True)[0]
    if live.numel() == 0:
        return targets
    img, st, task = next_images[live], next_states[live], tasks[live]
    f1 = q_t1.tower(img)
    f2 = q_t2.tower(img)
    best, _ = cem_argmax(
        lambda a: q_t1.score(f1, st, a, task),
        batch=live.numel(),
        action_dim=ACTION_DIM,
        iterations=config.cem_iterations,
        samples=config.cem_samples,
        elites=config.cem_elites,
        generator=generator,
        device=img.device,
        init_mean=CEM_INITIAL_MEAN,
    )
    a = best[:, None, :]
    q1 = torch.sigmoid(q_t1.head(f1, st, a, task)[:, 0])
    q2 = torch.sigmoid(q_t2.head(f2, st, a, task)[:, 0])
    targets[live] = targets[live] + config.gamma * torch.minimum(q1, q2)
    return targets


@torch.no_grad()
def bellman_targets_naive(
    q_t1: QNetwork,
    q_t2: QNetwork,
    next_images: torch.Tensor,
    next_states: torch.Tensor,
    tasks: torch.Tensor,
    rewards: torch.Tensor,
    dones: torch.Tensor,
    config: MTOptConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Reference implementation: one transition at a time, the full network for every CEM sample.

    Same result as `bellman_targets` (given the same random draws); used to check correctness
    and as the baseline of `bench/bellman_targets.py`.
    """
    out = []
    for i in range(next_images.shape[0]):
        r = float(rewards[i])
        if dones[i] >= 0.5:
            out.append(r)
            continue
        img, st, task = next_images[i : i + 1], next_states[i : i + 1], tasks[i : i + 1]

        def score(a: torch.Tensor) -> torch.Tensor:
            n = a.shape[1]
            return q_t1(img.expand(n, -1, -1, -1), st.expand(n, -1), a[0][:, None, :], task.expand(n))[:, 0][None]

        best, _ = cem_argmax(score, 1, ACTION_DIM, config.cem_iterations, config.cem_samples, config.cem_elites, generator,
                             init_mean=CEM_INITIAL_MEAN)
        a = best[:, None, :]
        q = min(float(torch.sigmoid(q_t1(img, st, a, task))), float(torch.sigmoid(q_t2(img, st, a, task))))
        out.append(r + config.gamma * q)
    return torch.tensor(out, dtype=torch.float32)


class TargetNetworks:
    """Qt1 (Polyak average of the online net) and Qt2 (lagged copy of Qt1).

    Usage::

        targets = TargetNetworks(q, config)
        for step in itertools.count():
            ...train q...
            targets.update(q)
    """

    def __init__(self, online: QNetwork, config: MTOptConfig):
        self.config = config
        self.q_t1 = copy.deepcopy(online).eval().requires_grad_(False)
        self.q_t2 = copy.deepcopy(online).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, online: QNetwork) -> None:
        tau = self.config.polyak_tau
        for t, o in zip(self.q_t1.parameters(), online.parameters()):
            t.lerp_(o, tau)
        self.updates += 1
        if self.updates % self.config.target_lag_steps == 0:
            self.q_t2.load_state_dict(self.q_t1.state_dict())

    def load(self, online: QNetwork) -> None:
        """Resets both target networks to the online weights (e.g. after restoring a checkpoint)."""
        self.q_t1.load_state_dict(online.state_dict())
        self.q_t2.load_state_dict(online.state_dict())
