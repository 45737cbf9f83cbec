"""Unit tests of the cross-entropy method (mtopt.core.cem) and its numpy twin (mtopt.onnx_policy)."""

import numpy as np
import torch

from mtopt.core.cem import cem_argmax
from mtopt.onnx_policy import cem_argmax_np

A0 = torch.tensor([[0.3, -0.5, 0.2, 0.1], [-0.7, 0.6, -0.1, 0.4], [0.0, 0.85, -0.6, -0.3]])


def quadratic(a0):
    calls = []

    def score(a):  # a: (B, N, A) -> (B, N)
        calls.append(a.clone())
        return -((a - a0[:, None, :]) ** 2).sum(-1)

    return score, calls


def test_cem_finds_known_maximum_per_row():
    score, calls = quadratic(A0)
    g = torch.Generator().manual_seed(0)
    best, s = cem_argmax(score, batch=3, action_dim=4, iterations=4, samples=256, elites=10, generator=g)
    assert best.shape == (3, 4) and s.shape == (3,)
    assert len(calls) == 4 and all(c.shape == (3, 256, 4) for c in calls)
    err = (best - A0).abs().max(dim=1).values
    assert torch.all(err < 0.1), err
    # the returned score is the score of the returned action
    torch.testing.assert_close(s, -((best - A0) ** 2).sum(-1))


def test_cem_best_is_best_of_everything_sampled_and_monotone():
    score, calls = quadratic(A0)
    g = torch.Generator().manual_seed(1)
    best, s = cem_argmax(score, batch=3, action_dim=4, generator=g)  # defaults: 2 iterations, 64, 6
    assert len(calls) == 2 and all(c.shape == (3, 64, 4) for c in calls)
    seen = list(calls)  # score() records its calls: evaluate on a snapshot
    per_iter = torch.stack([(-((c - A0[:, None, :]) ** 2).sum(-1)).max(dim=1).values for c in seen])  # (iterations, B)
    assert torch.all(s >= per_iter[0])  # never worse than the first iteration's best
    torch.testing.assert_close(s, per_iter.max(dim=0).values)
    # and the action returned is one of the sampled candidates
    every = torch.cat(seen, dim=1)  # (B, 128, A)
    for b in range(3):
        assert torch.any(torch.all(every[b] == best[b], dim=-1))


def test_cem_respects_bounds():
    # the maximum lies outside the box: CEM must return the clamped corner region, never beyond it
    target = torch.tensor([[3.0, -3.0, 2.0, -2.0]])
    score, calls = quadratic(target)
    g = torch.Generator().manual_seed(2)
    best, _ = cem_argmax(score, batch=1, action_dim=4, iterations=4, samples=128, elites=8, generator=g)
    for c in calls:
        assert c.min() >= -1.0 and c.max() <= 1.0
    assert best.min() >= -1.0 and best.max() <= 1.0
    torch.testing.assert_close(best.sign(), torch.tensor([[1.0, -1.0, 1.0, -1.0]]))
    assert torch.all(best.abs() > 0.9)
    # custom bounds are honoured too
    best, _ = cem_argmax(score, batch=1, action_dim=4, iterations=2, samples=64, elites=6, generator=g,
                         low=-0.5, high=0.25)
    assert best.min() >= -0.5 and best.max() <= 0.25


def test_cem_is_deterministic_under_a_generator():
    score, _ = quadratic(A0)
    a = cem_argmax(score, 3, 4, generator=torch.Generator().manual_seed(9))
    b = cem_argmax(score, 3, 4, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cem_rows_are_independent():
    """Row b's search depends only on row b's scores (batched over states)."""
    score, _ = quadratic(A0)
    best, _ = cem_argmax(score, 3, 4, iterations=4, samples=256, elites=10, generator=torch.Generator().manual_seed(0))
    # a constant score in row 1 does not disturb rows 0 and 2
    def mixed(a):
        s = score(a)
        s[1] = 0.0
        return s

    best2, s2 = cem_argmax(mixed, 3, 4, iterations=4, samples=256, elites=10, generator=torch.Generator().manual_seed(0))
    assert torch.all((best2[[0, 2]] - A0[[0, 2]]).abs() < 0.1)
    assert s2[1] == 0.0


def test_numpy_cem_finds_known_maximum():
    a0 = np.array([0.3, -0.5, 0.2, 0.1], np.float32)
    rng = np.random.default_rng(0)
    best, s = cem_argmax_np(lambda a: -((a - a0) ** 2).sum(-1), 4, iterations=4, samples=256, elites=10, rng=rng)
    assert best.shape == (4,)
    assert np.abs(best - a0).max() < 0.1
    assert np.isclose(s, -((best - a0) ** 2).sum(), atol=1e-6)
    assert np.all(np.abs(best) <= 1.0)


def test_first_population_is_centred_on_init_mean():
    mean = (0.5, -0.25, 0.0, -0.7)
    score, calls = quadratic(A0)
    cem_argmax(score, 3, 4, samples=4096, generator=torch.Generator().manual_seed(3), init_mean=mean)
    first = calls[0].reshape(-1, 4)  # clamped to [-1, 1], which moves the mean but not the median
    torch.testing.assert_close(first.median(dim=0).values, torch.tensor(mean), atol=0.04, rtol=0)
    rng = np.random.default_rng(3)
    seen = []
    cem_argmax_np(lambda a: seen.append(a) or -(a ** 2).sum(-1), 4, iterations=1, samples=4096, elites=6, rng=rng,
                  init_mean=mean)
    np.testing.assert_allclose(np.median(seen[0], axis=0), mean, atol=0.04)


def test_policy_spends_few_first_samples_on_terminate():
    """Every TERMINATE action is the same action: the policy's first population spends ~12% of
    its samples on it (CEM_INITIAL_MEAN), not half as a population centred on 0 would."""
    from mtopt.core.config import MTOptConfig
    from mtopt.core.networks import QNetwork
    from mtopt.core.policy import CEMPolicy

    q = QNetwork(32)
    policy = CEMPolicy(q, MTOptConfig(), seed=0)
    calls = []
    score = q.score
    q.score = lambda f, s, a, t: calls.append(a.clone()) or score(f, s, a, t)
    rng = np.random.default_rng(0)
    policy.batch(rng.integers(0, 256, (32, 64, 64, 3), dtype=np.uint8), np.zeros((32, 2), np.float32),
                 np.zeros(32, np.int64))
    terminating = (calls[0][..., 3] > 0).float().mean().item()  # 32 states x 64 samples
    assert 0.07 < terminating < 0.18, terminating
    assert 0.4 < (calls[0][..., 2] > 0).float().mean().item() < 0.6  # grip stays a coin flip
