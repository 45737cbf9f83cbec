"""Unit tests of the robot interface helpers and the built-in tabletop simulator."""

import numpy as np
import pytest

from mtopt.robot import ACTION_DIM, STATE_DIM, Observation, canonical_action, is_terminate, validate_action
from mtopt.sim import RandomPolicy, ScriptedPolicy, SimConfig, TabletopSim
from mtopt.sim.tabletop import COLOURS
from mtopt.tasks import Task


def act(x, y, grip, terminate=False):
    return np.array([x, y, 1.0 if grip else -1.0, 1.0 if terminate else -1.0], dtype=np.float32)


def snapshot(sim: TabletopSim):
    obs = sim.observe()
    return {
        "image": obs.image.copy(),
        "state": obs.state.copy(),
        "gripper": sim.gripper.copy(),
        "closed": sim.closed,
        "held": sim.held,
        "objects": [(o.colour, o.shape, o.pos.copy(), o.resting_on) for o in sim.objects],
        "rng": sim.rng.bit_generator.state,
    }


def assert_same_snapshot(a, b):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["state"], b["state"])
    np.testing.assert_array_equal(a["gripper"], b["gripper"])
    assert a["closed"] == b["closed"] and a["held"] == b["held"]
    assert len(a["objects"]) == len(b["objects"])
    for (c1, s1, p1, r1), (c2, s2, p2, r2) in zip(a["objects"], b["objects"]):
        assert (c1, s1, r1) == (c2, s2, r2)
        np.testing.assert_array_equal(p1, p2)
    assert a["rng"] == b["rng"]


def object_of(sim, colour):
    (i,) = [i for i, o in enumerate(sim.objects) if o.colour == colour]
    return i, sim.objects[i]


# -- robot.py helpers -------------------------------------------------------------------------
def test_canonical_action():
    a = canonical_action(np.array([1.5, -0.2, 0.3, -0.01], np.float32))
    np.testing.assert_array_equal(a, np.array([1.0, -0.2, 1.0, -1.0], np.float32))
    a = canonical_action(np.array([[-3.0, 0.5, 0.0, -0.9]], np.float32))
    np.testing.assert_array_equal(a, [[-1.0, 0.5, -1.0, -1.0]])  # grip 0 -> open (-1)
    a = canonical_action(np.array([[-3.0, 0.5, 0.7, 0.9]], np.float32))
    np.testing.assert_array_equal(a, [[0.0, 0.0, -1.0, 1.0]])  # every TERMINATE is one action
    np.testing.assert_array_equal(
        canonical_action(np.array([0.1, 0.2, 0.3, -0.5])), canonical_action(np.array([0.1, 0.2, 0.9, -1.0]))
    )


def test_validate_action():
    np.testing.assert_array_equal(validate_action([0.0, 1.0, -1.0, 0.5]), [0.0, 1.0, -1.0, 0.5])
    for bad, msg in (
        ([0.0, 0.0, 0.0], "shape"),
        (np.zeros((2, 4)), "shape"),
        ([0.0, np.nan, 0.0, 0.0], "NaN"),
        ([0.0, np.inf, 0.0, 0.0], "NaN or infinity"),
        ([1.5, 0.0, 0.0, 0.0], r"\[-1, 1\]"),
        ([0.0, 0.0, -1.01, 0.0], r"\[-1, 1\]"),
    ):
        with pytest.raises(ValueError, match=msg):
            validate_action(bad)
    assert is_terminate(np.array([0, 0, 0, 0.1]))
    assert not is_terminate(np.array([0, 0, 0, 0.0]))


# -- observations and determinism -------------------------------------------------------------
def test_observation_format():
    sim = TabletopSim(seed=0)
    obs = sim.reset()
    assert isinstance(obs, Observation)
    assert obs.image.shape == (64, 64, 3) and obs.image.dtype == np.uint8
    assert obs.state.shape == (STATE_DIM,) and obs.state.dtype == np.float32
    np.testing.assert_array_equal(obs.state, [0.0, 0.0])
    assert len(sim.objects) == 4
    assert sorted(o.colour for o in sim.objects) == sorted(COLOURS)
    assert sorted(o.shape for o in sim.objects) == ["ball", "ball", "cube", "cube"]
    assert TabletopSim(SimConfig(image_size=32), seed=0).observe().image.shape == (32, 32, 3)


def test_same_seed_same_actions_identical():
    actions = np.random.default_rng(5).uniform(-1, 1, (25, ACTION_DIM)).astype(np.float32)
    actions[:, 3] = -1.0
    a, b = TabletopSim(seed=7), TabletopSim(seed=7)
    np.testing.assert_array_equal(a.observe().image, b.observe().image)
    for step, action in enumerate(actions):
        oa, ob = a.act(action), b.act(action)
        np.testing.assert_array_equal(oa.image, ob.image, err_msg=f"step {step}")
        np.testing.assert_array_equal(oa.state, ob.state, err_msg=f"step {step}")
        if step == 12:
            oa, ob = a.reset(), b.reset()
            np.testing.assert_array_equal(oa.image, ob.image)
    assert_same_snapshot(snapshot(a), snapshot(b))


def test_different_seed_different_scene():
    a, b = TabletopSim(seed=1), TabletopSim(seed=2)
    assert not np.array_equal(a.observe().image, b.observe().image)
    pa = np.stack([o.pos for o in a.objects])
    pb = np.stack([o.pos for o in b.objects])
    assert not np.allclose(pa, pb)


def test_reset_starts_fresh_scene():
    sim = TabletopSim(seed=3)
    first = sim.observe().image
    _, obj = object_of(sim, "red")
    sim.act(act(*obj.pos, grip=True))
    assert sim.holding
    obs = sim.reset()
    assert not sim.holding and not sim.closed
    assert all(o.resting_on == "table" for o in sim.objects)
    np.testing.assert_array_equal(obs.state, [0.0, 0.0])
    assert not np.array_equal(obs.image, first)  # a new scene, not the old one


def test_objects_start_in_bin_and_apart():
    for seed in range(20):
        sim = TabletopSim(seed=seed)
        pos = np.stack([o.pos for o in sim.objects])
        assert np.all(pos[:, 0] < -0.1) and np.all(pos[:, 0] > -0.95)
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(len(pos)) * 9
        assert d.min() > 0.3


# -- invalid actions --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        [np.nan, 0.0, 1.0, -1.0],
        [0.0, 0.0, 1.0, np.inf],
        [0.0, 0.0, 1.0],
        [0.0, 0.0, 1.0, -1.0, 0.0],
        [[0.0, 0.0, 1.0, -1.0]],
        [1.2, 0.0, 1.0, -1.0],
        [0.0, -1.5, -1.0, -1.0],
    ],
)
def test_invalid_action_raises_and_changes_nothing(bad):
    sim, twin = TabletopSim(seed=11), TabletopSim(seed=11)
    _, obj = object_of(sim, "green")
    sim.act(act(*obj.pos, grip=True))
    twin.act(act(*obj.pos, grip=True))
    before = snapshot(sim)
    with pytest.raises(ValueError):
        sim.act(np.array(bad, dtype=np.float32))
    assert_same_snapshot(before, snapshot(sim))
    # and the future is unaffected: the sim continues exactly like a twin that never saw it
    nxt = act(0.55, 0.0, grip=True)
    np.testing.assert_array_equal(sim.act(nxt).image, twin.act(nxt).image)
    assert_same_snapshot(snapshot(sim), snapshot(twin))


# -- grasping, placing, presenting ------------------------------------------------------------
@pytest.mark.parametrize("colour", list(COLOURS))
def test_grasp_object_at_its_position(catalogue, colour):
    sim = TabletopSim(seed=21)
    i, obj = object_of(sim, colour)
    obs = sim.act(act(*obj.pos, grip=True))
    assert sim.holding and sim.held == i
    assert obj.resting_on == "gripper"
    np.testing.assert_array_equal(obs.state, [1.0, 1.0])
    np.testing.assert_array_equal(obj.pos, sim.gripper)
    assert sim.success(catalogue["lift-any"])
    assert sim.success(catalogue[f"lift-{obj.shape}"])
    other_shape = "ball" if obj.shape == "cube" else "cube"
    assert not sim.success(catalogue[f"lift-{other_shape}"])
    for c in ("red", "green", "blue"):
        assert sim.success(catalogue[f"lift-{c}"]) == (c == colour)
    # still in the bin: nothing placed, nothing presented
    for name in ("place-on-plate", "place-in-bowl", "place-any", "present-any"):
        assert not sim.success(catalogue[name])
    # the held object is not reported as lying on the table
    assert len(sim.object_positions()) == 3
    assert sim.object_positions(colour=colour) == []


def test_closing_far_from_objects_grasps_nothing(catalogue):
    sim = TabletopSim(seed=4)
    obs = sim.act(act(0.9, 0.9, grip=True))  # far right corner, objects are in the left bin
    assert not sim.holding
    np.testing.assert_array_equal(obs.state, [1.0, 0.0])
    assert not sim.success(catalogue["lift-any"])


def test_release_on_plate(catalogue):
    sim = TabletopSim(seed=5)
    _, obj = object_of(sim, "red")
    sim.act(act(*obj.pos, grip=True))
    assert sim.success(catalogue["lift-red"])
    obs = sim.act(act(*sim.fixtures["plate"], grip=False))
    assert not sim.holding
    np.testing.assert_array_equal(obs.state, [0.0, 0.0])
    assert obj.resting_on == "plate"
    assert sim.success(catalogue["place-on-plate"])
    assert sim.success(catalogue["place-any"])
    assert not sim.success(catalogue["place-in-bowl"])
    assert sim.success(catalogue["place-cube-on-plate"]) == (obj.shape == "cube")
    assert not sim.success(catalogue["lift-red"])
    assert not sim.success(catalogue["lift-any"])


def test_release_in_bowl_and_on_table(catalogue):
    sim = TabletopSim(seed=6)
    _, blue = object_of(sim, "blue")
    sim.act(act(*blue.pos, grip=True))
    sim.act(act(*sim.fixtures["bowl"], grip=False))
    assert blue.resting_on == "bowl"
    assert sim.success(catalogue["place-in-bowl"]) and sim.success(catalogue["place-any"])
    assert not sim.success(catalogue["place-on-plate"])

    sim = TabletopSim(seed=6)
    _, blue = object_of(sim, "blue")
    sim.act(act(*blue.pos, grip=True))
    sim.act(act(0.0, 0.9, grip=False))  # open table, away from plate and bowl
    assert blue.resting_on == "table"
    for name in ("place-on-plate", "place-in-bowl", "place-any", "lift-any"):
        assert not sim.success(catalogue[name])


def test_hold_over_present_square(catalogue):
    sim = TabletopSim(seed=8)
    _, red = object_of(sim, "red")
    sim.act(act(*red.pos, grip=True))
    assert not sim.success(catalogue["present-any"])  # holding, but over the bin
    sim.act(act(*sim.fixtures["present"], grip=True))
    assert sim.holding
    assert sim.success(catalogue["present-any"])
    assert sim.success(catalogue["present-red"])
    assert sim.success(catalogue["present-ball"]) == (red.shape == "ball")
    assert sim.success(catalogue["lift-any"]) and sim.success(catalogue["lift-red"])
    assert not sim.success(catalogue["place-any"])
    # the same pose with a different object is a near miss for present-red
    sim = TabletopSim(seed=8)
    _, green = object_of(sim, "green")
    sim.act(act(*green.pos, grip=True))
    sim.act(act(*sim.fixtures["present"], grip=True))
    assert sim.success(catalogue["present-any"]) and not sim.success(catalogue["present-red"])


def test_terminate_moves_nothing(catalogue):
    sim = TabletopSim(seed=9)
    _, obj = object_of(sim, "yellow")
    sim.act(act(*obj.pos, grip=True))
    before = snapshot(sim)
    # terminate with an "open" command and a far target: nothing moves, nothing is released
    obs = sim.act(act(0.9, -0.9, grip=False, terminate=True))
    assert_same_snapshot(before, snapshot(sim))
    np.testing.assert_array_equal(obs.image, before["image"])
    assert sim.holding and sim.success(catalogue["lift-any"])


def test_success_needs_a_goal():
    sim = TabletopSim(seed=0)
    with pytest.raises(ValueError, match="no `goal`"):
        sim.success(Task(index=0, name="mystery", skill="s"))


# -- bootstrap policies -----------------------------------------------------------------------
def run_episode(sim, policy, task, max_steps=10):
    obs = sim.reset()
    policy.reset(task)
    for _ in range(max_steps):
        action = policy(obs, task.index)
        validate_action(action)
        obs = sim.act(action)
        if is_terminate(action):
            break
    return sim.success(task)


def test_scripted_policy_success_rates(catalogue):
    sim = TabletopSim(seed=123)
    policy = ScriptedPolicy(sim, np.random.default_rng(1))
    n = 300
    rates = {t.name: np.mean([run_episode(sim, policy, t) for _ in range(n)]) for t in catalogue}
    for name, rate in rates.items():
        assert 0.0 < rate < 0.7, (name, rate)
    # "any" tasks are strictly easier than their specific variants
    std = np.sqrt(0.25 / n)
    assert rates["lift-any"] > rates["lift-red"] + 3 * std
    assert rates["lift-any"] > rates["lift-cube"]
    assert rates["place-any"] > rates["place-on-plate"]
    assert rates["place-on-plate"] >= rates["place-cube-on-plate"]
    assert rates["present-any"] > rates["present-red"]


def test_random_policy_actions_are_valid(catalogue):
    rng = np.random.default_rng(0)
    policy = RandomPolicy(rng, terminate_probability=0.2)
    policy.reset(catalogue["lift-any"])
    obs = TabletopSim(seed=0).observe()
    acts = np.stack([policy(obs) for _ in range(2000)])
    assert np.all(np.abs(acts) <= 1.0)
    assert set(np.unique(acts[:, 3])) == {-1.0, 1.0}
    assert abs(np.mean(acts[:, 3] > 0) - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 2000)
