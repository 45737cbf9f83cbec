"""Unit tests of Bellman targets, the Q loss and the target networks (mtopt.core.bellman)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from mtopt.core.bellman import TargetNetworks, bellman_targets, bellman_targets_naive, q_loss
from mtopt.core.config import MTOptConfig
from mtopt.core.learner import TargetComputer
from mtopt.core.networks import QNetwork
from mtopt.core.replay import Batch

SLOTS, SIZE, CH = 32, 64, 8
CONFIG = MTOptConfig(image_size=SIZE, channels=CH)  # gamma 0.9, CEM (2, 64, 6)
SMALL = MTOptConfig(image_size=SIZE, channels=CH, cem_samples=16, cem_elites=4)  # cheaper for the naive reference


def logit(p):
    return math.log(p / (1 - p))


def constant_q(c: float) -> QNetwork:
    """A Q-network whose sigmoid output is c for every input: all weights zero, final bias logit(c)."""
    q = QNetwork(SLOTS, SIZE, CH)
    with torch.no_grad():
        for p in q.parameters():
            p.zero_()
        q.q_head.fc[-1].bias.fill_(logit(c))
    return q.eval()


def random_q(seed: int) -> QNetwork:
    torch.manual_seed(seed)
    return QNetwork(SLOTS, SIZE, CH).eval()


def inputs(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, SIZE, SIZE, 3), dtype=torch.uint8, generator=g)
    states = torch.rand(b, 2, generator=g)
    tasks = torch.randint(0, 13, (b,), generator=g)
    return images, states, tasks


class Exploding(nn.Module):
    """Fails if the targets computation touches the network at all."""

    def tower(self, *a):
        raise AssertionError("the network was evaluated for terminal transitions")

    head = score = forward = tower


class QuadraticQ(nn.Module):
    """Duck-typed Q with logit peak - k * ||a - a0||^2 (independent of the state)."""

    def __init__(self, a0, peak, k=10.0):
        super().__init__()
        self.a0, self.peak, self.k = torch.tensor(a0), peak, k

    def tower(self, images):
        return torch.zeros(images.shape[0], 1)

    def head(self, features, states, actions, tasks):
        return self.peak - self.k * ((actions - self.a0) ** 2).sum(-1)

    score = head  # the chunked twin of head, where the library has one


# -- terminal transitions ---------------------------------------------------------------------
@pytest.mark.parametrize("rewards", [[0.0, 1.0, 1.0, 0.0], [-0.05, 1.0, 0.0, -0.05]])
def test_terminal_target_is_exactly_the_reward(rewards):
    images, states, tasks = inputs(4)
    r = torch.tensor(rewards)
    dones = torch.ones(4)
    config = MTOptConfig(image_size=SIZE, channels=CH, step_penalty=0.05)
    for fn in (bellman_targets, bellman_targets_naive):
        y = fn(Exploding(), Exploding(), images, states, tasks, r, dones, config)
        assert torch.equal(y, r)
        assert y.dtype == torch.float32
    q = constant_q(0.7)
    y = bellman_targets(q, q, images, states, tasks, r, dones, config)
    assert torch.equal(y, r)


def test_targets_do_not_modify_rewards():
    images, states, tasks = inputs(3)
    r = torch.tensor([0.0, 1.0, -0.05])
    before = r.clone()
    q = constant_q(0.6)
    bellman_targets(q, q, images, states, tasks, r, torch.tensor([0.0, 1.0, 0.0]), CONFIG)
    assert torch.equal(r, before)


# -- non-terminal transitions -----------------------------------------------------------------
@pytest.mark.parametrize("c", [0.2, 0.5, 0.85])
def test_nonterminal_target_with_constant_network(c):
    images, states, tasks = inputs(5)
    r = torch.tensor([0.0, 1.0, -0.05, 0.0, 1.0])
    dones = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0])
    q = constant_q(c)
    y = bellman_targets(q, q, images, states, tasks, r, dones, CONFIG, torch.Generator().manual_seed(0))
    expected = torch.tensor([0.0 + 0.9 * c, 1.0 + 0.9 * c, -0.05 + 0.9 * c, 0.0, 1.0])
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    assert torch.equal(y[3:], r[3:])


def test_gamma_is_used():
    images, states, tasks = inputs(2)
    q = constant_q(0.5)
    config = MTOptConfig(image_size=SIZE, channels=CH, gamma=0.5)
    y = bellman_targets(q, q, images, states, tasks, torch.zeros(2), torch.zeros(2), config)
    torch.testing.assert_close(y, torch.full((2,), 0.25), rtol=0, atol=1e-6)


def test_clipped_double_q_uses_the_minimum():
    images, states, tasks = inputs(3)
    r = torch.tensor([0.0, 1.0, -0.05])
    dones = torch.zeros(3)
    hi, lo = constant_q(0.8), constant_q(0.3)
    expected = r + 0.9 * 0.3
    for q1, q2 in ((hi, lo), (lo, hi)):
        for fn in (bellman_targets, bellman_targets_naive):
            y = fn(q1, q2, images, states, tasks, r, dones, SMALL, torch.Generator().manual_seed(0))
            torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)


def test_action_is_argmax_of_qt1_and_evaluated_in_both():
    """a* maximises Qt1; Qt2 is evaluated at a*, not at its own maximum."""
    a0 = [0.3, -0.5, 0.2, 0.1]
    a1 = [0.6, -0.5, 0.2, 0.1]  # Qt2 peaks 0.3 away: logit 1 - 10 * 0.09 = 0.1 at a0
    q1, q2 = QuadraticQ(a0, peak=2.0), QuadraticQ(a1, peak=1.0)
    images, states, tasks = inputs(4)
    config = MTOptConfig(image_size=SIZE, channels=CH, cem_iterations=4, cem_samples=256, cem_elites=10)
    r = torch.tensor([0.0, 1.0, 0.0, 0.0])
    y = bellman_targets(q1, q2, images, states, tasks, r, torch.zeros(4), config, torch.Generator().manual_seed(0))
    sig = lambda x: 1 / (1 + math.exp(-x))
    expected = r + 0.9 * min(sig(2.0), sig(0.1))  # = r + 0.9 * 0.525
    torch.testing.assert_close(y, expected, rtol=0, atol=0.03)
    # had Qt2 been maximised on its own, the target would be r + 0.9 * sigmoid(1) = r + 0.658
    assert torch.all(y < r + 0.9 * sig(1.0) - 0.05)


# -- the reference implementation -------------------------------------------------------------
def test_naive_agrees_with_batched_on_constant_network():
    images, states, tasks = inputs(6)
    r = torch.tensor([0.0, 1.0, 0.0, -0.05, 1.0, 0.0])
    dones = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    q1, q2 = constant_q(0.65), constant_q(0.4)
    a = bellman_targets(q1, q2, images, states, tasks, r, dones, SMALL, torch.Generator().manual_seed(1))
    b = bellman_targets_naive(q1, q2, images, states, tasks, r, dones, SMALL, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_naive_agrees_with_batched_given_the_same_draws():
    """With one CEM iteration both consume the generator in the same order (transition by transition,
    live transitions only), so on a random network they must pick the same actions and agree closely.
    With several iterations the draws interleave differently, so only a single transition is compared.
    """
    q1, q2 = random_q(0), random_q(1)
    images, states, tasks = inputs(6, seed=3)
    r = torch.tensor([0.0, 1.0, 0.0, -0.05, 1.0, 0.0])
    dones = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    one = MTOptConfig(image_size=SIZE, channels=CH, cem_iterations=1, cem_samples=32, cem_elites=4)
    a = bellman_targets(q1, q2, images, states, tasks, r, dones, one, torch.Generator().manual_seed(7))
    b = bellman_targets_naive(q1, q2, images, states, tasks, r, dones, one, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert torch.equal(a[dones > 0], r[dones > 0])
    for i in (0, 3):
        sl = slice(i, i + 1)
        a = bellman_targets(q1, q2, images[sl], states[sl], tasks[sl], r[sl], dones[sl], SMALL, torch.Generator().manual_seed(i))
        b = bellman_targets_naive(q1, q2, images[sl], states[sl], tasks[sl], r[sl], dones[sl], SMALL, torch.Generator().manual_seed(i))
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_target_is_at_least_value_of_any_fixed_action_when_networks_agree():
    """With Qt1 == Qt2 the target is r + gamma * max-ish Q: never far below Q at the zero action."""
    q = random_q(4)
    images, states, tasks = inputs(4, seed=5)
    config = MTOptConfig(image_size=SIZE, channels=CH, cem_iterations=3, cem_samples=128, cem_elites=8)
    y = bellman_targets(q, q, images, states, tasks, torch.zeros(4), torch.zeros(4), config, torch.Generator().manual_seed(0))
    with torch.no_grad():
        grid = torch.rand(4, 64, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
        q_grid = torch.sigmoid(q(images, states, grid, tasks))  # (4, 64)
    assert torch.all(y >= 0.9 * q_grid.mean(dim=1))
    assert torch.all(y <= 0.9 * 1.0)


# -- loss -------------------------------------------------------------------------------------
def test_q_loss_matches_hand_computed_bce():
    logits = torch.tensor([0.0, math.log(3.0)])  # sigmoid: 0.5, 0.75
    targets = torch.tensor([1.0, 0.25])
    first = -math.log(0.5)
    second = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    expected = (first + second) / 2  # = 0.902394...
    assert abs(expected - 0.9023943) < 1e-6
    assert abs(float(q_loss(logits, targets)) - expected) < 1e-6


def test_q_loss_is_minimised_at_the_target():
    t = torch.tensor([0.3])
    losses = [float(q_loss(torch.tensor([logit(p)]), t)) for p in (0.1, 0.2, 0.3, 0.4, 0.5)]
    assert int(np.argmin(losses)) == 2


# -- target networks --------------------------------------------------------------------------
def params(net):
    return [p.detach().clone() for p in net.parameters()]


def test_target_networks_start_as_frozen_copies():
    online = random_q(0)
    tn = TargetNetworks(online, CONFIG)
    for net in (tn.q_t1, tn.q_t2):
        assert net is not online
        assert not net.training
        for t, o in zip(net.parameters(), online.parameters()):
            assert torch.equal(t, o) and not t.requires_grad
            assert t.data_ptr() != o.data_ptr()
    with torch.no_grad():
        next(online.parameters()).add_(1.0)
    assert not torch.equal(next(tn.q_t1.parameters()), next(online.parameters()))


def test_polyak_update_and_lagged_copy():
    tau, lag = 0.25, 3
    config = MTOptConfig(image_size=SIZE, channels=CH, polyak_tau=tau, target_lag_steps=lag)
    online = random_q(0)
    tn = TargetNetworks(online, config)
    initial = params(online)
    g = torch.Generator().manual_seed(0)
    q2_expected = initial
    for step in range(1, 8):
        with torch.no_grad():  # a "training step": move the online weights
            for p in online.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        old = params(tn.q_t1)
        tn.update(online)
        assert tn.updates == step
        for t, o, on in zip(tn.q_t1.parameters(), old, online.parameters()):
            torch.testing.assert_close(t, (1 - tau) * o + tau * on, rtol=1e-6, atol=1e-6)
        if step % lag == 0:
            q2_expected = params(tn.q_t1)
        for t, e in zip(tn.q_t2.parameters(), q2_expected):
            assert torch.equal(t, e), f"q_t2 after update {step}"
        if step < lag:
            for t, e in zip(tn.q_t2.parameters(), initial):
                assert torch.equal(t, e)
    # q_t2 is a copy, not an alias of q_t1
    assert not all(torch.equal(a, b) for a, b in zip(tn.q_t1.parameters(), tn.q_t2.parameters()))


def test_target_networks_load_resets_both():
    online = random_q(0)
    tn = TargetNetworks(online, MTOptConfig(image_size=SIZE, channels=CH, polyak_tau=0.5, target_lag_steps=1))
    other = random_q(1)
    tn.load(other)
    for net in (tn.q_t1, tn.q_t2):
        for t, o in zip(net.parameters(), other.parameters()):
            assert torch.equal(t, o)


# -- the Bellman worker's wrapper -------------------------------------------------------------
def test_target_computer_clamps_targets_to_unit_interval():
    tn = TargetNetworks(constant_q(0.9), CONFIG)
    rng = np.random.default_rng(0)
    b = 4
    batch = Batch(
        images=rng.integers(0, 256, (b, SIZE, SIZE, 3), dtype=np.uint8),
        states=np.zeros((b, 2), np.float32),
        actions=np.zeros((b, 4), np.float32),
        next_images=rng.integers(0, 256, (b, SIZE, SIZE, 3), dtype=np.uint8),
        next_states=np.zeros((b, 2), np.float32),
        tasks=np.array([0, 1, 2, 3], np.int64),
        rewards=np.array([1.0, 0.0, -0.5, 1.0], np.float32),
        dones=np.array([0.0, 0.0, 0.0, 1.0], np.float32),
        successes=np.array([True, False, False, True]),
    )
    out = TargetComputer(tn, CONFIG)(batch)
    # 1 + 0.81 -> 1;  0 + 0.81;  -0.5 + 0.81 = 0.31;  terminal 1
    torch.testing.assert_close(out.targets, torch.tensor([1.0, 0.81, 0.31, 1.0]), rtol=0, atol=1e-6)
    assert torch.equal(out.tasks, torch.from_numpy(batch.tasks))
    assert out.images.dtype == torch.uint8
