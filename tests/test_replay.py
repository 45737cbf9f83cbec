"""Unit tests of impersonation, per-task replay buffers and re-balanced sampling (mtopt.core.replay)."""

import numpy as np
import pytest

from mtopt.core.replay import Batch, ReplayBuffer, held_bytes, impersonate, rebalanced_counts
from mtopt.episode import Episode

IMG = 64


def make_episode(episode_id, rng, steps=2, task="lift-red", images=None):
    if images is None:
        images = rng.integers(0, 256, (steps + 1, IMG, IMG, 3), dtype=np.uint8)
    ep = Episode(
        episode_id=episode_id,
        robot_id="sim-0",
        task=task,
        images=images,
        states=rng.uniform(0, 1, (steps + 1, 2)).astype(np.float32),
        actions=rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
    )
    ep.validate()
    return ep


def ids(buffer, catalogue, name):
    s, f = buffer.buffers[catalogue[name].index]
    return list(s), list(f)


# -- impersonation ----------------------------------------------------------------------------
def test_impersonate_orig_returns_only_the_task(catalogue):
    for task in catalogue:
        assert impersonate(task, catalogue, "orig") == [task]


def test_impersonate_all_returns_every_task(catalogue):
    for task in catalogue:
        assert impersonate(task, catalogue, "all") == list(catalogue.tasks)


def test_impersonate_skill_never_crosses_a_skill(catalogue):
    for task in catalogue:
        got = impersonate(task, catalogue, "skill")
        assert task in got
        assert all(t.skill == task.skill for t in got)
        expected = {t.name for t in catalogue if t.skill == task.skill}
        assert {t.name for t in got} == expected
    assert {t.name for t in impersonate(catalogue["present-red"], catalogue, "skill")} == {
        "present-any", "present-red", "present-ball"
    }


def test_impersonate_unknown_mode(catalogue):
    with pytest.raises(ValueError, match="orig, all or skill"):
        impersonate(catalogue["lift-red"], catalogue, "some")


def test_impersonation_keeps_failures_and_successes(catalogue, rng):
    buffer = ReplayBuffer(catalogue)
    ep = make_episode("e0", rng, task="lift-red")
    targets = impersonate(catalogue["lift-red"], catalogue, "skill")
    succeeded = {"lift-any", "lift-red", "lift-cube"}
    outcomes = {t.name: t.name in succeeded for t in targets}
    buffer.add(ep, outcomes)

    assert len(buffer) == 1 and buffer.nbytes == held_bytes(ep)  # stored once, referenced six times
    for t in targets:
        s, f = ids(buffer, catalogue, t.name)
        if t.name in succeeded:
            assert (s, f) == (["e0"], []), t.name
        else:
            assert (s, f) == ([], ["e0"]), t.name  # the failure is kept
    for t in catalogue:
        if t.skill != "lift":
            assert ids(buffer, catalogue, t.name) == ([], [])
    sizes = buffer.sizes()
    assert sizes["lift-red"] == (1, 0) and sizes["lift-blue"] == (0, 1) and sizes["place-any"] == (0, 0)

    # the failure side is sampled as well: lift-blue only has the failure
    batch = buffer.sample(16, rng, tasks=[catalogue["lift-blue"].index])
    assert not batch.successes.any()
    assert set(batch.tasks.tolist()) == {catalogue["lift-blue"].index}


def test_add_unknown_task_raises_and_stores_nothing(catalogue, rng):
    buffer = ReplayBuffer(catalogue)
    with pytest.raises(KeyError, match="lift-purple"):
        buffer.add(make_episode("e0", rng), {"lift-red": True, "lift-purple": False})
    assert len(buffer) == 0 and buffer.nbytes == 0
    assert all(s == [] and f == [] for s, f in buffer.buffers.values())


# -- rebalanced_counts ------------------------------------------------------------------------
def test_rebalanced_counts_sum_to_batch_size_exactly():
    rng = np.random.default_rng(1)
    for _ in range(300):
        n_tasks = int(rng.integers(1, 14))
        avail = {k: (int(rng.integers(0, 4)) * int(rng.integers(0, 50)), int(rng.integers(0, 4)) * int(rng.integers(0, 50)))
                 for k in range(n_tasks)}
        batch_size = int(rng.integers(1, 300))
        frac = float(rng.choice([0.0, 0.25, 0.5, 1.0]))
        out = rebalanced_counts(avail, batch_size, frac, rng)
        with_data = {k for k, (s, f) in avail.items() if s + f}
        assert set(out) == with_data
        if with_data:
            assert sum(s + f for s, f in out.values()) == batch_size
            per = [s + f for s, f in out.values()]
            assert max(per) - min(per) <= 1  # equal shares, remainder spread
        for k, (s, f) in out.items():
            assert s >= 0 and f >= 0
            if avail[k][0] == 0:
                assert s == 0
            if avail[k][1] == 0:
                assert f == 0


def test_rebalanced_counts_empty_and_fallbacks():
    rng = np.random.default_rng(0)
    assert rebalanced_counts({}, 32, 0.5, rng) == {}
    assert rebalanced_counts({0: (0, 0), 1: (0, 0)}, 32, 0.5, rng) == {}
    out = rebalanced_counts({0: (10, 0), 1: (0, 7), 2: (0, 0), 3: (4, 4)}, 30, 0.5, rng)
    assert out[0] == (10, 0)  # only successes: they fill the share
    assert out[1] == (0, 10)  # only failures: they fill the share
    assert 2 not in out
    assert sum(out[3]) == 10 and out[3] == (5, 5)  # 10 * 0.5 is an integer: no rounding noise
    assert rebalanced_counts({0: (3, 3)}, 8, 1.0, rng) == {0: (8, 0)}
    assert rebalanced_counts({0: (3, 3)}, 8, 0.0, rng) == {0: (0, 8)}


def test_rebalanced_counts_rounding_is_unbiased():
    rng = np.random.default_rng(2)
    draws = [rebalanced_counts({0: (5, 5)}, 43, 0.5, rng)[0][0] for _ in range(4000)]
    assert set(draws) == {21, 22}
    assert abs(np.mean(draws) - 21.5) < 4 * 0.5 / np.sqrt(4000)


# -- sampling ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def skewed(catalogue):
    """Task A (lift-any): 1000 successes; B (lift-red): 5 successes, 500 failures; C (place-any): 1 / 2."""
    rng = np.random.default_rng(3)
    shared = rng.integers(0, 256, (3, IMG, IMG, 3), dtype=np.uint8)  # pixels are irrelevant here
    buffer = ReplayBuffer(catalogue)
    spec = [("lift-any", True, 1000), ("lift-red", True, 5), ("lift-red", False, 500),
            ("place-any", True, 1), ("place-any", False, 2)]
    n = 0
    for name, ok, count in spec:
        for _ in range(count):
            buffer.add(make_episode(f"e{n}", rng, images=shared), {name: ok})
            n += 1
    idx = {k: catalogue[name].index for k, name in (("A", "lift-any"), ("B", "lift-red"), ("C", "place-any"))}
    return buffer, idx


def _collect(buffer, rebalance, batches, batch_size, seed):
    rng = np.random.default_rng(seed)
    tasks, succ, per_batch = [], [], []
    for _ in range(batches):
        b = buffer.sample(batch_size, rng, rebalance=rebalance, success_fraction=0.5)
        assert len(b) == batch_size
        tasks.append(b.tasks)
        succ.append(b.successes)
        per_batch.append(np.bincount(b.tasks, minlength=buffer.catalogue.num_slots))
    return np.concatenate(tasks), np.concatenate(succ), np.stack(per_batch)


def test_rebalanced_sampling_on_skewed_data(skewed):
    buffer, idx = skewed
    assert buffer.sizes()["lift-any"] == (1000, 0)
    assert buffer.sizes()["lift-red"] == (5, 500)
    assert buffer.sizes()["place-any"] == (1, 2)
    batches, bs = 150, 128
    tasks, succ, per_batch = _collect(buffer, True, batches, bs, seed=4)
    n = len(tasks)
    assert set(np.unique(tasks).tolist()) == set(idx.values())
    # every batch splits 128 = 42 + 43 + 43 in some order
    for k in idx.values():
        assert set(np.unique(per_batch[:, k]).tolist()) <= {42, 43}
    for k in idx.values():
        share = np.mean(tasks == k)
        assert abs(share - 1 / 3) < 4 * np.sqrt((1 / 3) * (2 / 3) / n), (k, share)
    # A has no failures: all its draws are successes (empty-side fallback)
    assert succ[tasks == idx["A"]].all()
    # B and C have both sides: half successes, however skewed the data
    for key in ("B", "C"):
        m = tasks == idx[key]
        frac = succ[m].mean()
        assert abs(frac - 0.5) < 4 * np.sqrt(0.25 / m.sum()), (key, frac)


def test_sampling_without_rebalance_follows_the_data(skewed):
    buffer, idx = skewed
    tasks, succ, _ = _collect(buffer, False, 150, 128, seed=5)
    n = len(tasks)
    total = 1000 + 505 + 3
    for key, count in (("A", 1000), ("B", 505), ("C", 3)):
        p = count / total
        share = np.mean(tasks == idx[key])
        assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-9, (key, share, p)
    m = tasks == idx["B"]
    p = 5 / 505
    assert abs(succ[m].mean() - p) < 4 * np.sqrt(p * (1 - p) / m.sum())
    assert succ[tasks == idx["A"]].all()


def test_sample_restricted_to_tasks(skewed):
    buffer, idx = skewed
    rng = np.random.default_rng(6)
    for rebalance in (True, False):
        b = buffer.sample(64, rng, rebalance=rebalance, tasks=[idx["B"], idx["C"]])
        assert set(b.tasks.tolist()) <= {idx["B"], idx["C"]}
        assert len(b) == 64


def test_sample_on_empty_buffer_raises_lookup_error(catalogue, rng):
    buffer = ReplayBuffer(catalogue)
    for rebalance in (True, False):
        with pytest.raises(LookupError):
            buffer.sample(8, rng, rebalance=rebalance)
    buffer.add(make_episode("e0", rng), {"lift-red": True})
    for rebalance in (True, False):
        with pytest.raises(LookupError):
            buffer.sample(8, rng, rebalance=rebalance, tasks=[catalogue["place-any"].index])
        assert len(buffer.sample(8, rng, rebalance=rebalance)) == 8


def test_sampled_transitions_are_consistent(catalogue):
    """Each transition is (s_t, a_t, s_t+1) of one episode; only the last is terminal."""
    rng = np.random.default_rng(7)
    steps = 4
    ep = make_episode("e0", rng, steps=steps)
    for t in range(steps + 1):
        ep.images[t] = t * 10  # image t is uniformly 10 * t
    ep.states[:, 0] = np.arange(steps + 1)
    ep.actions[:, 0] = np.arange(steps) / 10
    penalty = 0.05
    buffer = ReplayBuffer(catalogue, step_penalty=penalty)
    buffer.add(ep, {"lift-red": True, "lift-blue": False})
    b = buffer.sample(400, rng, rebalance=True)
    assert isinstance(b, Batch)
    assert b.images.shape == (400, IMG, IMG, 3) and b.images.dtype == np.uint8
    assert b.next_images.shape == b.images.shape
    assert b.states.shape == (400, 2) and b.actions.shape == (400, 4)
    t = b.images[:, 0, 0, 0].astype(int) // 10
    np.testing.assert_array_equal(b.next_images[:, 0, 0, 0], (t + 1) * 10)
    np.testing.assert_array_equal(b.states[:, 0], t)
    np.testing.assert_array_equal(b.next_states[:, 0], t + 1)
    np.testing.assert_allclose(b.actions[:, 0], t / 10, rtol=1e-6)
    np.testing.assert_array_equal(b.dones, (t == steps - 1).astype(np.float32))
    assert set(t.tolist()) == set(range(steps))
    red, blue = catalogue["lift-red"].index, catalogue["lift-blue"].index
    np.testing.assert_array_equal(b.successes, b.tasks == red)
    term = b.dones > 0
    np.testing.assert_array_equal(b.rewards[term], (b.tasks[term] == red).astype(np.float32))
    np.testing.assert_array_equal(b.rewards[~term], np.full((~term).sum(), -penalty, np.float32))
    assert set(b.tasks.tolist()) == {red, blue}
    assert b.rewards.dtype == np.float32 and b.dones.dtype == np.float32 and b.tasks.dtype == np.int64


# -- relabelling and eviction -----------------------------------------------------------------
def test_relabel_moves_episode_between_success_and_failure(catalogue, rng):
    buffer = ReplayBuffer(catalogue)
    buffer.add(make_episode("e0", rng), {"lift-red": True, "lift-any": True})
    buffer.add(make_episode("e1", rng), {"lift-red": False})
    assert ids(buffer, catalogue, "lift-red") == (["e0"], ["e1"])
    buffer.relabel("e0", {"lift-red": False, "lift-blue": True})
    assert ids(buffer, catalogue, "lift-red") == ([], ["e1", "e0"])
    assert ids(buffer, catalogue, "lift-blue") == (["e0"], [])
    assert ids(buffer, catalogue, "lift-any") == ([], [])  # outcomes are replaced, not merged
    assert len(buffer) == 2
    # re-adding a stored episode relabels it instead of storing a copy
    nbytes = buffer.nbytes
    buffer.add(buffer.episodes["e1"], {"lift-red": True})
    assert len(buffer) == 2 and buffer.nbytes == nbytes
    assert ids(buffer, catalogue, "lift-red") == (["e1"], ["e0"])


def test_eviction_by_capacity(catalogue, rng):
    probe = make_episode("probe", rng)
    capacity = int(3.5 * held_bytes(probe))
    buffer = ReplayBuffer(catalogue, capacity_bytes=capacity)
    names = ["lift-red", "lift-any", "place-any"]
    for i in range(10):
        buffer.add(make_episode(f"e{i}", rng), {n: bool((i + j) % 2) for j, n in enumerate(names)})
        assert buffer.nbytes <= capacity
        assert buffer.nbytes == sum(held_bytes(e) for e in buffer.episodes.values())
    assert list(buffer.episodes) == ["e7", "e8", "e9"]  # oldest first out
    assert set(buffer.labels) == {"e7", "e8", "e9"}
    referenced = {e for s, f in buffer.buffers.values() for e in s + f}
    assert referenced == {"e7", "e8", "e9"}
    for n in names:
        s, f = ids(buffer, catalogue, n)
        assert len(s) + len(f) == 3
    b = buffer.sample(32, rng)  # every reference resolves
    assert len(b) == 32


def test_relabel_of_evicted_episode_leaves_no_dangling_reference(catalogue, rng):
    probe = make_episode("probe", rng)
    buffer = ReplayBuffer(catalogue, capacity_bytes=int(2.5 * held_bytes(probe)))
    for i in range(3):
        buffer.add(make_episode(f"e{i}", rng), {"lift-red": True})
    assert "e0" not in buffer.episodes  # evicted
    try:  # e.g. a success detector relabelling pass racing eviction
        buffer.relabel("e0", {"lift-red": False})
    except (KeyError, LookupError):
        pass  # refusing is an acceptable answer
    referenced = {e for s, f in buffer.buffers.values() for e in s + f}
    assert referenced <= set(buffer.episodes)
    buffer.sample(16, rng)


def test_add_task_makes_room(catalogue, rng):
    from mtopt.tasks import Task

    buffer = ReplayBuffer(catalogue)
    buffer.add(make_episode("e0", rng), {"lift-red": True})
    buffer.add_task(Task(index=20, name="push-red", skill="push", goal={"kind": "hold"}))
    assert buffer.sizes()["push-red"] == (0, 0)
    assert buffer.sizes()["lift-red"] == (1, 0)
    buffer.add(make_episode("e1", rng), {"push-red": True})
    b = buffer.sample(20, rng)
    assert set(b.tasks.tolist()) == {1, 20}


def test_failed_relabel_keeps_previous_outcomes(catalogue, rng):
    buffer = ReplayBuffer(catalogue)
    buffer.add(make_episode("e0", rng), {"lift-red": True, "lift-blue": False})
    with pytest.raises(KeyError, match="lift-purple"):
        buffer.relabel("e0", {"lift-red": False, "lift-purple": True})
    assert ids(buffer, catalogue, "lift-red") == (["e0"], [])
    assert ids(buffer, catalogue, "lift-blue") == ([], ["e0"])


def test_relabel_many_rebuilds_lists_in_age_order_and_is_all_or_nothing(catalogue, rng):
    buffer = ReplayBuffer(catalogue)
    for i in range(4):
        buffer.add(make_episode(f"e{i}", rng), {"lift-red": i % 2 == 0, "lift-any": True})
    buffer.relabel_many({"e0": {"lift-red": False}, "e3": {"lift-red": True, "lift-blue": True}})
    assert ids(buffer, catalogue, "lift-red") == (["e2", "e3"], ["e0", "e1"])  # oldest first, for eviction
    assert ids(buffer, catalogue, "lift-any") == (["e1", "e2"], [])  # e0 and e3 no longer train lift-any
    assert ids(buffer, catalogue, "lift-blue") == (["e3"], [])
    before = {k: (list(s), list(f)) for k, (s, f) in buffer.buffers.items()}
    with pytest.raises(KeyError, match="gone"):
        buffer.relabel_many({"e1": {"lift-red": True}, "gone": {"lift-red": True}})
    with pytest.raises(KeyError, match="lift-purple"):
        buffer.relabel_many({"e1": {"lift-red": True}, "e2": {"lift-purple": True}})
    assert {k: (list(s), list(f)) for k, (s, f) in buffer.buffers.items()} == before
