"""Fans registry changes out to every WatchVersions stream of one process.

The registry calls the hub (from whatever thread applied the change) after every change it makes
or reads from the log; the hub wakes the waiting streams on the event loop. Each stream is a
coroutine that reads new events from the registry's in-memory ring (or, if it fell that far
behind, from the log) and waits on one shared asyncio.Event per model: a stream costs no thread
and no storage round trip, so one process holds thousands. With shared storage (several
replicas) the hub also polls the log every ``poll_s`` for changes made elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Awaitable, Callable

from mtopt.model_registry.layout import ALIAS_SET, PINNED, ROLLED_BACK, UNPINNED, Event
from mtopt.model_registry.registry import Registry, WatchStart

log = logging.getLogger(__name__)

RunIO = Callable[..., Awaitable]


class WatchHub:
    """Wakes watch streams when a model's event log grows."""

    def __init__(self, registry: Registry, run_io: RunIO, *, poll_s: float = 0.5, poll: bool = True):
        self.registry, self._run_io, self.poll_s, self._poll = registry, run_io, poll_s, poll
        self._seq: dict[str, int] = {}
        self._waiters: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self.closed = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.registry.listeners.append(self._on_events)
        if self._poll:
            self._task = asyncio.create_task(self._run(), name="model-registry-watch-poll")

    def _on_events(self, model: str, events: list[Event], state) -> None:
        """Registry listener (any thread)."""
        loop = self._loop
        if not events or loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._advance, model, events[-1].sequence)
        except RuntimeError:  # the loop is shutting down
            pass

    def _advance(self, model: str, sequence: int) -> None:
        self._seq[model] = max(self._seq.get(model, 0), sequence)
        waiter = self._waiters.pop(model, None)
        if waiter is not None:
            waiter.set()

    def position(self, model: str) -> int:
        """Last sequence of ``model`` that streams can read."""
        return max(self._seq.get(model, 0), self.registry.last_sequence(model))

    async def wait_for_change(self, model: str, seen: int) -> None:
        """Returns once the model's log is past ``seen`` or the hub closed."""
        while not self.closed and self.position(model) <= seen:
            waiter = self._waiters.get(model)
            if waiter is None:
                waiter = self._waiters[model] = asyncio.Event()
            await waiter.wait()

    async def _run(self) -> None:
        failing = False
        while not self.closed:
            try:
                await self._run_io(self.registry.refresh_all)
                if failing:
                    log.info("watch hub: the event logs answer again")
                failing = False
            except Exception as e:  # storage hiccup: try again next round
                if not failing:
                    log.warning("watch hub: reading the event logs failed (will keep trying): %s", e)
                failing = True
            try:
                await asyncio.wait_for(self._stop.wait(), self.poll_s)
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        """Ends every watch stream (they return) and stops polling."""
        self.closed = True
        self._stop.set()
        for waiter in self._waiters.values():
            waiter.set()
        self._waiters.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def follow(hub: WatchHub, model: str, start: WatchStart, robot_id: str = "", alias: str = "") -> AsyncIterator[tuple]:
    """Yields ("event", Event) for the backlog and then every live event of ``model``, and,
    with ``robot_id``, ("resolved", version, previous_version, followed_alias, sequence) right
    after each event that changes the version that robot should run. Ends when the hub closes.
    """
    pin, alias_version = start.at.pin, start.at.aliases.get(alias, 0)
    resolved = pin or alias_version
    cursor, pending = start.at.sequence, start.backlog
    registry = hub.registry
    while True:
        for e in pending:
            yield ("event", e)
            cursor = e.sequence
            if not robot_id:
                continue
            if e.type in (PINNED, UNPINNED) and e.robot_id == robot_id:
                pin = e.version if e.type == PINNED else 0
            elif e.type in (ALIAS_SET, ROLLED_BACK) and e.alias == alias:
                alias_version = e.version
            if (pin or alias_version) != resolved:
                yield ("resolved", pin or alias_version, resolved, "" if pin else alias, e.sequence)
                resolved = pin or alias_version
        if hub.closed:
            return
        pending = registry.cached_events(model, cursor)
        if pending is None:  # fell behind the in-memory ring: page through the log
            pending = await hub._run_io(registry.events, model, cursor)
        if not pending:
            await hub.wait_for_change(model, cursor)
