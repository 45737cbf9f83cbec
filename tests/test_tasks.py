"""Unit tests of the task catalogue (mtopt.tasks)."""

import numpy as np
import pytest
import yaml

from mtopt.tasks import GOAL_KINDS, Task, TaskCatalogue


def _cat(tasks, reserved_slots=None):
    data = {"tasks": tasks}
    if reserved_slots is not None:
        data["reserved_slots"] = reserved_slots
    return TaskCatalogue.from_dict(data)


# -- the built-in catalogue -------------------------------------------------------------------
def test_builtin_catalogue_loads(catalogue):
    assert len(catalogue) >= 12
    assert len(catalogue.skills) >= 3
    assert {"lift", "place", "present"} <= set(catalogue.skills)
    assert catalogue.num_slots == 32
    assert len(catalogue.names) == len(set(catalogue.names))


def test_builtin_indices_unique_and_in_range(catalogue):
    idx = catalogue.indices
    assert len(set(idx)) == len(idx)
    assert all(0 <= i < catalogue.num_slots for i in idx)
    assert idx == sorted(idx)  # tasks are ordered by index
    for t in catalogue:
        assert catalogue.by_index(t.index) is t
        assert catalogue[t.name] is t
        assert t.name in catalogue


def test_builtin_goals_are_valid(catalogue):
    for t in catalogue:
        assert t.goal["kind"] in GOAL_KINDS


def test_skills_partition_tasks(catalogue):
    seen = []
    for skill in catalogue.skills:
        members = catalogue.tasks_in_skill(skill)
        assert members and all(t.skill == skill for t in members)
        seen += [t.name for t in members]
    assert sorted(seen) == sorted(catalogue.names)
    assert [t.name for t in catalogue.tasks_in_skill("present")] == ["present-any", "present-red", "present-ball"]


def test_known_task_fields(catalogue):
    t = catalogue["lift-red"]
    assert (t.index, t.skill) == (1, "lift")
    assert dict(t.goal) == {"kind": "hold", "colour": "red"}


def test_one_hot_shape_and_values(catalogue):
    oh = catalogue.one_hot([0, 5, 12])
    assert oh.shape == (3, catalogue.num_slots)
    assert oh.dtype == np.float32
    np.testing.assert_array_equal(oh.sum(axis=1), [1.0, 1.0, 1.0])
    assert oh[0, 0] == oh[1, 5] == oh[2, 12] == 1.0
    all_oh = catalogue.one_hot(np.array(catalogue.indices))
    assert all_oh.shape == (len(catalogue), catalogue.num_slots)
    np.testing.assert_array_equal(all_oh.argmax(axis=1), catalogue.indices)
    assert catalogue.one_hot([]).shape == (0, catalogue.num_slots)


def test_unknown_task_keyerror_names_known_tasks(catalogue):
    with pytest.raises(KeyError) as info:
        catalogue["lift-purple"]
    msg = str(info.value)
    assert "lift-purple" in msg
    for name in ("lift-any", "place-on-plate", "present-ball"):
        assert name in msg
    assert "lift-purple" not in catalogue


def test_load_from_file_roundtrip(tmp_path, catalogue):
    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump(catalogue.to_dict()))
    again = TaskCatalogue.load(path)
    assert again.names == catalogue.names
    assert again.indices == catalogue.indices
    assert again.num_slots == catalogue.num_slots
    assert [dict(t.goal) for t in again] == [dict(t.goal) for t in catalogue]


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TaskCatalogue.load(tmp_path / "nope.yaml")


# -- validation -------------------------------------------------------------------------------
def test_duplicate_names_rejected():
    with pytest.raises(ValueError, match=r"unique.*'a'"):
        _cat([{"index": 0, "name": "a", "skill": "s"}, {"index": 1, "name": "a", "skill": "s"}])


def test_duplicate_indices_rejected():
    with pytest.raises(ValueError, match="indices must be unique"):
        _cat([{"index": 0, "name": "a", "skill": "s"}, {"index": 0, "name": "b", "skill": "s"}])


def test_index_at_or_beyond_reserved_slots_rejected():
    with pytest.raises(ValueError, match=r"\['b'\].*reserved_slots=2"):
        _cat([{"index": 0, "name": "a", "skill": "s"}, {"index": 2, "name": "b", "skill": "s"}], reserved_slots=2)
    with pytest.raises(ValueError, match="reserved_slots"):
        TaskCatalogue([Task(index=-1, name="neg", skill="s")], num_slots=4)
    # index reserved_slots - 1 is fine
    assert _cat([{"index": 3, "name": "a", "skill": "s"}], reserved_slots=4).num_slots == 4


def test_bad_goal_kind_rejected():
    with pytest.raises(ValueError, match=r"'a'.*goal\.kind.*'fly'"):
        _cat([{"index": 0, "name": "a", "skill": "s", "goal": {"kind": "fly"}}])
    with pytest.raises(ValueError, match="goal.kind"):
        _cat([{"index": 0, "name": "a", "skill": "s", "goal": {"colour": "red"}}])  # no kind at all


def test_missing_fields_and_bad_shape_rejected():
    with pytest.raises(ValueError, match=r"task #1 is missing \['skill'\]"):
        _cat([{"index": 0, "name": "a", "skill": "s"}, {"index": 1, "name": "b"}])
    with pytest.raises(ValueError, match="tasks:"):
        TaskCatalogue.from_dict({"not_tasks": []})
    with pytest.raises(ValueError, match="empty"):
        TaskCatalogue([], num_slots=4)


def test_reserved_slots_defaults_to_max_index_plus_one():
    cat = _cat([{"index": 4, "name": "a", "skill": "s"}, {"index": 1, "name": "b", "skill": "s"}])
    assert cat.num_slots == 5
    assert cat.names == ["b", "a"]  # ordered by index


# -- growing and restricting ------------------------------------------------------------------
def test_extended_keeps_indices(catalogue):
    new = Task(index=20, name="push-red", skill="push", goal={"kind": "hold", "colour": "red"})
    grown = catalogue.extended([new])
    assert len(grown) == len(catalogue) + 1
    assert grown.num_slots == catalogue.num_slots
    for t in catalogue:
        assert grown[t.name].index == t.index
    assert grown["push-red"].index == 20
    assert "push" in grown.skills
    assert "push-red" not in catalogue  # the original is untouched
    np.testing.assert_array_equal(grown.one_hot([20]).argmax(axis=1), [20])


def test_extended_rejects_collisions(catalogue):
    with pytest.raises(ValueError, match="indices must be unique"):
        catalogue.extended([Task(index=0, name="new", skill="lift")])
    with pytest.raises(ValueError, match="unique"):
        catalogue.extended([Task(index=21, name="lift-red", skill="lift")])
    with pytest.raises(ValueError, match="reserved_slots"):
        catalogue.extended([Task(index=catalogue.num_slots, name="new", skill="lift")])


def test_subset_keeps_indices(catalogue):
    sub = catalogue.subset(["present-ball", "lift-red"])
    assert sub.names == ["lift-red", "present-ball"]
    assert sub.indices == [1, 12]
    assert sub.num_slots == catalogue.num_slots
    with pytest.raises(KeyError):
        catalogue.subset(["nope"])
