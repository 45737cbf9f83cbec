"""The task catalogue: names, skills and one-hot slots of every task the fleet learns.

The catalogue is a YAML file (``mtopt/tasks.yaml`` is the built-in default). Services, the robot
agent and the experiment runner all read the same file, so a task's index means the same thing
everywhere.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

GOAL_KINDS = ("hold", "rest_on", "hold_over")


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: a goal that the success detector can judge from the final image."""

    index: int
    """Slot in the Q-network's one-hot task input."""
    name: str
    skill: str
    """Tasks of one skill share semantics and dynamics (f_skill impersonation stays inside it)."""
    description: str = ""
    goal: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Ground-truth goal, read only by the simulator."""


class TaskCatalogue:
    """An ordered, validated set of tasks.

    Usage::

        catalogue = TaskCatalogue.load()            # built-in default
        task = catalogue["lift-red"]
        same_skill = catalogue.tasks_in_skill(task.skill)
        one_hot = catalogue.one_hot([task.index])   # shape (1, catalogue.num_slots)
    """

    def __init__(self, tasks: Sequence[Task], num_slots: int):
        if not tasks:
            raise ValueError("the task catalogue is empty: declare at least one task under `tasks:`")
        names = [t.name for t in tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"task names must be unique; repeated: {dupes}")
        indices = [t.index for t in tasks]
        if len(set(indices)) != len(indices):
            raise ValueError(f"task indices must be unique; got {indices}")
        bad = [t.name for t in tasks if not 0 <= t.index < num_slots]
        if bad:
            raise ValueError(
                f"tasks {bad} have an index outside [0, reserved_slots={num_slots}); "
                "raise reserved_slots or renumber the new tasks"
            )
        for t in tasks:
            kind = t.goal.get("kind") if t.goal else None
            if t.goal and kind not in GOAL_KINDS:
                raise ValueError(f"task {t.name!r}: goal.kind must be one of {GOAL_KINDS}, got {kind!r}")
        self.tasks: tuple[Task, ...] = tuple(sorted(tasks, key=lambda t: t.index))
        self.num_slots = num_slots
        self._by_name = {t.name: t for t in self.tasks}
        self._by_index = {t.index: t for t in self.tasks}

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None) -> "TaskCatalogue":
        """Reads a catalogue YAML file; ``None`` reads the built-in default."""
        if path is None:
            text = resources.files("mtopt").joinpath("tasks.yaml").read_text()
            source = "built-in mtopt/tasks.yaml"
        else:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"task catalogue {path} does not exist; set MTOPT_TASKS to a YAML file")
            text, source = path.read_text(), str(path)
        return cls.from_dict(yaml.safe_load(text), source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "TaskCatalogue":
        if not isinstance(data, Mapping) or "tasks" not in data:
            raise ValueError(f"{source}: expected a mapping with a `tasks:` list")
        tasks = []
        for i, entry in enumerate(data["tasks"]):
            missing = [k for k in ("index", "name", "skill") if k not in entry]
            if missing:
                raise ValueError(f"{source}: task #{i} is missing {missing}")
            tasks.append(
                Task(
                    index=int(entry["index"]),
                    name=str(entry["name"]),
                    skill=str(entry["skill"]),
                    description=str(entry.get("description", "")),
                    goal=dict(entry.get("goal") or {}),
                )
            )
        return cls(tasks, int(data.get("reserved_slots", max(t.index for t in tasks) + 1)))

    def to_dict(self) -> dict:
        return {
            "reserved_slots": self.num_slots,
            "tasks": [dataclasses.asdict(t) | {"goal": dict(t.goal)} for t in self.tasks],
        }

    def subset(self, names: Sequence[str]) -> "TaskCatalogue":
        """The same tasks (same indices) restricted to ``names``."""
        return TaskCatalogue([self[n] for n in names], self.num_slots)

    def extended(self, new_tasks: Sequence[Task]) -> "TaskCatalogue":
        """A catalogue with new tasks added in free slots (for growing a running system)."""
        return TaskCatalogue(list(self.tasks) + list(new_tasks), self.num_slots)

    # -- lookups -----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Task:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(self.names)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def by_index(self, index: int) -> Task:
        return self._by_index[index]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def indices(self) -> list[int]:
        return [t.index for t in self.tasks]

    @property
    def skills(self) -> list[str]:
        return sorted({t.skill for t in self.tasks})

    def tasks_in_skill(self, skill: str) -> list[Task]:
        return [t for t in self.tasks if t.skill == skill]

    def one_hot(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        out = np.zeros((idx.shape[0], self.num_slots), dtype=np.float32)
        out[np.arange(idx.shape[0]), idx] = 1.0
        return out
