"""Cross-entropy method (CEM) over continuous actions, batched over states.

QT-Opt's defaults: 2 iterations of 64 Gaussian samples, refit on the 6 best (elites). The first
population is N(init_mean, init_std); the policy centres it with `mtopt.robot.CEM_INITIAL_MEAN`. The
score function receives candidate actions (B, N, A) and returns scores (B, N); callers compute
the image tower once and score candidates with the cheap head only.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def cem_argmax(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    batch: int,
    action_dim: int,
    iterations: int = 2,
    samples: int = 64,
    elites: int = 6,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    init_std: float = 0.6,
    init_mean: Sequence[float] | None = None,
    low: float = -1.0,
    high: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (best action (B, A), its score (B,)) over every sample drawn in every iteration."""
    mean = torch.zeros(batch, action_dim, device=device)
    if init_mean is not None:
        mean += torch.as_tensor(init_mean, dtype=mean.dtype, device=device)
    std = torch.full((batch, action_dim), init_std, device=device)
    best_a = torch.zeros(batch, action_dim, device=device)
    best_s = torch.full((batch,), -torch.inf, device=device)
    rows = torch.arange(batch, device=device)
    for _ in range(iterations):
        noise = torch.randn(batch, samples, action_dim, generator=generator, device=device)
        cand = (mean[:, None, :] + std[:, None, :] * noise).clamp(low, high)
        scores = score_fn(cand)  # (B, N)
        top_s, top_i = scores.topk(elites, dim=1)
        elite = cand[rows[:, None], top_i]  # (B, E, A)
        improved = top_s[:, 0] > best_s
        best_a = torch.where(improved[:, None], elite[:, 0], best_a)
        best_s = torch.where(improved, top_s[:, 0], best_s)
        mean = elite.mean(dim=1)
        std = elite.std(dim=1, unbiased=False).clamp_min(1e-3)
    return best_a, best_s
