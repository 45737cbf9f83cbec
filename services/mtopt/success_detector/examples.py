"""Labelled examples: validation of AddExamples, idempotent durable writes, per-task counts.

The whole request is validated (ids, tasks, every image decoded and checked against the image
size) before anything is written, so a rejected request stores nothing. Ids already stored (or
repeated inside the request) are skipped, not rewritten.

Usage (inside the event loop)::

    book = ExampleBook(storage, catalogue, image_size, run_io)
    await book.load()                                      # the index, by listing the storage
    prepared = book.validate(request.examples)             # SdError on bad input
    added_per_task, duplicates = await book.add(prepared)
    book.counts()                                          # {task: (positives, negatives)}
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Awaitable, Callable, Iterable

from mtopt.episode_codec import EpisodeDecodeError, decode_image
from mtopt.success_detector.errors import InvalidRequest
from mtopt.success_detector.storage import SdStorage, example_hash
from mtopt.tasks import TaskCatalogue

MAX_ID_CHARS = 512


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One validated example, ready to store."""

    h: str
    task: str
    success: bool
    data: bytes


class ExampleBook:
    """The stored examples' index ({hash of example_id: (task, success)}) and how to add to it."""

    def __init__(self, storage: SdStorage, catalogue: TaskCatalogue, image_size: int, run_io: Callable[..., Awaitable]):
        self.storage, self.catalogue, self.image_size, self._run_io = storage, catalogue, image_size, run_io
        self.index: dict[str, tuple[str, bool]] = {}
        self._reserved: set[str] = set()
        self.loaded = False
        self.listeners: list[Callable[[str, bool, int], None]] = []  # (task, success, count) after a change

    async def load(self) -> None:
        """(Re)builds the index from the storage (listing only)."""
        index = await self._run_io(self.storage.load_index)
        self.index.update(index)
        self.loaded = True
        self._notify(self.catalogue.names)

    def counts(self) -> dict[str, tuple[int, int]]:
        """{task: (positives, negatives)} for every task with examples and every catalogue task."""
        out = {t: [0, 0] for t in self.catalogue.names}
        for task, success in self.index.values():
            out.setdefault(task, [0, 0])[0 if success else 1] += 1
        return {t: (p, n) for t, (p, n) in out.items()}

    def entries(self, tasks: Iterable[str]) -> list[tuple[str, str, bool]]:
        """[(h, task, success)] of the stored examples of ``tasks``, in a stable order."""
        wanted = set(tasks)
        return sorted((h, t, s) for h, (t, s) in self.index.items() if t in wanted)

    def validate(self, examples) -> list[Prepared]:
        """Checks every LabelledExample; InvalidRequest (reason invalid_example, unknown_task or
        invalid_image) on the first bad one."""
        out = []
        shape = (self.image_size, self.image_size, 3)
        for i, ex in enumerate(examples):
            where = f"examples[{i}]"
            if not ex.example_id or len(ex.example_id) > MAX_ID_CHARS:
                raise InvalidRequest(f"{where}.example_id must be 1-{MAX_ID_CHARS} characters (e.g. '<episode_id>/<task>'), "
                                     f"got {len(ex.example_id)}", "invalid_example")
            if ex.task not in self.catalogue:
                raise InvalidRequest(f"{where}.task {ex.task!r} is not in the task catalogue; known tasks: "
                                     f"{', '.join(self.catalogue.names)} (set MTOPT_TASKS to add tasks)", "unknown_task")
            if not ex.HasField("image"):
                raise InvalidRequest(f"{where}.image is missing", "invalid_image")
            try:
                decode_image(ex.image, name=f"{where}.image", expected_shape=shape)
            except EpisodeDecodeError as e:
                raise InvalidRequest(str(e), "invalid_image") from None
            out.append(Prepared(example_hash(ex.example_id), ex.task, bool(ex.success), ex.SerializeToString()))
        return out

    async def add(self, prepared: list[Prepared]) -> tuple[dict[str, int], int]:
        """Stores the examples not stored yet; ({task: examples added}, duplicates). Concurrent
        calls with the same id store it once."""
        fresh, duplicates = [], 0
        for p in prepared:  # no await in this loop: check and reserve atomically in the event loop
            if p.h in self.index or p.h in self._reserved:
                duplicates += 1
            else:
                self._reserved.add(p.h)
                fresh.append(p)
        try:
            results = await asyncio.gather(*(self._run_io(self.storage.put_example, p.h, p.task, p.success, p.data) for p in fresh),
                                           return_exceptions=True)
            error = next((r for r in results if isinstance(r, BaseException)), None)
            added: dict[str, int] = {}
            for p, created in zip(fresh, results):
                if isinstance(created, BaseException):
                    continue
                self.index[p.h] = (p.task, p.success)  # stored now, by this call or an earlier one
                if created:
                    added[p.task] = added.get(p.task, 0) + 1
                else:
                    duplicates += 1
            self._notify({p.task for p in fresh})
            if error is not None:
                raise error
            return added, duplicates
        finally:
            self._reserved.difference_update(p.h for p in fresh)

    def _notify(self, tasks: Iterable[str]) -> None:
        counts = self.counts()
        for task in tasks:
            p, n = counts.get(task, (0, 0))
            for listener in self.listeners:
                listener(task, True, p)
                listener(task, False, n)
