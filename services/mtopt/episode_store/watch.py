"""Tails the commit log once per store process and fans new episodes out to every watch stream.

One `WatchHub` task polls the backend (woken at once by this process's own commits, and every
``poll_s`` for commits made by other replicas) and keeps the most recent records in a ring.
Each WatchEpisodes stream is a coroutine that first pages through the backend from its cursor
(the backlog), then follows the ring; a stream that falls behind the ring goes back to paging.
Streams therefore cost no thread, and the backend is polled once per process, not per stream.

The hub's ``position`` is a cursor up to which the log is complete: the backend's horizon says
no commit can still appear at or below it, so a cursor never skips an episode.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
from typing import Awaitable, Callable

from mtopt.episode_store.layout import EpisodeRecord, LogName, position_cursor
from mtopt.episode_store.storage import EpisodeBackend

log = logging.getLogger(__name__)

RunIO = Callable[..., Awaitable]


class WatchHub:
    """Shared tail of the commit log for all watch streams of one store process."""

    def __init__(self, backend: EpisodeBackend, run_io: RunIO, poll_s: float = 0.5, ring_size: int = 10_000):
        self.backend = backend
        self._run_io = run_io
        self.poll_s = poll_s
        self._ring: collections.deque[EpisodeRecord] = collections.deque()
        self._ring_cursors: collections.deque[str] = collections.deque()
        self._ring_size = ring_size
        self.position = ""
        self._floor = ""
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self.closed = False
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Sets the position to "now" and starts tailing."""
        self.position = self._floor = position_cursor(await self._run_io(self.backend.horizon_ns))
        self._task = asyncio.create_task(self._run(), name="episode-watch-hub")

    def wake(self) -> None:
        """Polls now (called after this process committed an episode)."""
        self._wake.set()

    async def close(self) -> None:
        """Ends every watch stream (they return) and stops tailing."""
        self.closed = True
        self._changed.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        failing = False
        while not self.closed:
            self._wake.clear()
            try:
                await self.poll()
                if failing:
                    log.info("watch hub: the commit log answers again")
                failing = False
            except Exception as e:  # storage hiccup: keep the position, try again next round
                if not failing:
                    log.warning("watch hub: polling the commit log failed (will keep trying): %s", e)
                failing = True
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except asyncio.TimeoutError:
                continue
            if self.backend.settle_s > 0:
                # Our own commits pass the horizon only settle_s after they were made: one
                # poll then covers every commit made meanwhile (instead of one list per commit).
                await asyncio.sleep(self.backend.settle_s)

    async def poll(self) -> None:
        """Appends every commit between the position and the backend's horizon to the ring."""
        horizon = await self._run_io(self.backend.horizon_ns)
        new: list[EpisodeRecord] = []
        after = self.position
        while True:
            records, last, reached_end = await self._run_io(self.backend.scan_log, after, 1000, None, 10_000, horizon)
            new.extend(records)
            after = last
            if reached_end:
                break
        target = position_cursor(horizon)
        if not new and target <= self.position:
            return
        for r in new:
            self._ring.append(r)
            self._ring_cursors.append(r.cursor)
        while len(self._ring) > self._ring_size:
            self._ring.popleft()
            self._floor = self._ring_cursors.popleft()
        self.position = max(self.position, target)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def from_ring(self, cursor: str) -> list[EpisodeRecord] | None:
        """Records after ``cursor`` up to the position, or None if the ring no longer has them."""
        if cursor < self._floor:
            return None
        i = bisect.bisect_right(self._ring_cursors, cursor)
        return [self._ring[j] for j in range(i, len(self._ring))]

    async def wait_for_change(self, seen_position: str) -> None:
        """Returns once the position moved past ``seen_position`` or the hub closed."""
        while self.position == seen_position and not self.closed:
            await self._changed.wait()


async def follow(
    hub: WatchHub, cursor: str, match: Callable[[LogName], bool]
):
    """Yields ("stored", record, backfill) for every record after ``cursor`` that ``match``es,
    then ("caught_up", cursor) once, then live records, until the hub closes.

    The backlog is paged from the backend; live records come from the hub's ring.
    """
    backlog = True
    while not hub.closed:
        snapshot = hub.position
        ring = hub.from_ring(cursor)
        if ring is None:
            records, last, reached_end = await hub._run_io(
                hub.backend.scan_log, cursor, 256, match, 10_000, LogName.parse_cursor(snapshot).stored_ns
            )
            for r in records:
                yield ("stored", r, backlog)
            cursor = max(cursor, snapshot) if reached_end else last
            continue
        for r in ring:
            if match(r.log_name):
                yield ("stored", r, backlog)
        cursor = max(cursor, snapshot)
        if backlog:
            backlog = False
            yield ("caught_up", cursor)
        await hub.wait_for_change(snapshot)
