"""Following episode_store: watch -> read -> decode -> label -> buffer -> persist the cursor.

`Follower.run()` keeps one WatchEpisodes stream open from the last position it handled. Events
are read ahead into a bounded queue and processed in batches (one Classify call per batch). For
each batch it reads the episodes (GetEpisode, several at once), decodes them in the thread pool,
asks the success detector for the tasks impersonation assigns, adds them to the buffers and only
then saves the cursor together with the processed count. Any dependency failure (store or SD
down, deadlines) abandons the batch and reopens the stream from the same position after a
backoff: nothing is lost, and nothing is counted twice.

After a restart the buffers are refilled: the stream starts at ``state.refill_cursor`` and
events up to ``state.cursor`` go into the buffers without being counted again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import grpc

from mtopt.episode_codec import EpisodeDecodeError, episode_from_proto
from mtopt.log_replay.buffer import ReplayCache
from mtopt.log_replay.labeller import Labeller
from mtopt.log_replay.metrics import ReplayMetrics
from mtopt.log_replay.state import CursorStore, ReplayState
from mtopt.serving import RetryPolicy, retry_idempotent_async
from mtopt.v1 import episode_store_pb2 as es_pb

log = logging.getLogger(__name__)

RunIO = Callable[..., Awaitable]
_END = object()


class ReplayCore:
    """State shared by the follower, relabelling and the servicer."""

    def __init__(self, cache: ReplayCache, labeller: Labeller, cursor_store: CursorStore, state: ReplayState,
                 metrics: ReplayMetrics, run_io: RunIO):
        self.cache, self.labeller, self.cursor_store = cache, labeller, cursor_store
        self.state, self.metrics, self.run_io = state, metrics, run_io
        self.ingest_lock = asyncio.Lock()
        """Held while a batch is labelled and added; relabelling takes it to switch SD versions."""
        self.data_changed = asyncio.Condition()
        self.caught_up = False
        self.closed = False

    @property
    def sd_version(self) -> int:
        return self.state.sd_version

    async def save_state(self) -> None:
        """Persists a snapshot of the state (blocking write in the thread pool)."""
        snapshot = self.state.copy()
        await self.run_io(self.cursor_store.save, snapshot)

    async def notify(self) -> None:
        """Wakes SampleBatches streams waiting for data and refreshes the buffer gauges."""
        self.metrics.update_buffer(self.cache.counts(), self.cache.nbytes, self.cache.capacity_bytes)
        async with self.data_changed:
            self.data_changed.notify_all()


class Follower:
    """Consumes the store's episodes into the buffers (see the module docstring)."""

    def __init__(self, core: ReplayCore, store_stub, *, batch: int = 32, read_ahead: int = 256, fetch_concurrency: int = 8,
                 timeout_s: float = 10.0, backoff_s: float = 0.2, retry: RetryPolicy = RetryPolicy()):
        self.core, self.stub = core, store_stub
        self.batch, self.read_ahead, self.timeout_s, self.backoff_s, self.retry = batch, read_ahead, timeout_s, backoff_s, retry
        self._fetch_slots = asyncio.Semaphore(fetch_concurrency)
        state = core.state
        self.refill_until = state.cursor
        """Events at or before this cursor were counted before a restart: refill only."""
        self.position = state.refill_cursor if state.cursor else ""
        """Cursor of the last event handled (refill or new); streams resume after it."""
        self.lag = 0

    async def run(self) -> None:
        """Follows the store until cancelled, reconnecting with backoff after failures."""
        backoff = self.backoff_s
        while not self.core.closed:
            before = self.position
            try:
                await self._follow()
                wait = self.backoff_s  # the stream ended (store stopping): reconnect
            except asyncio.CancelledError:
                raise
            except Exception as e:
                dependency = e.dependency if isinstance(e, DependencyError) else "episode_store"
                self.core.metrics.dependency_errors.labels(dependency).inc()
                log.warning("log_replay: %s failed (%s); retrying from the same cursor in %.1fs",
                            dependency, e if isinstance(e, DependencyError) else _describe(e), backoff)
                wait = backoff
            self._set_caught_up(False)
            backoff = self.backoff_s if self.position != before else min(5.0, backoff * 2)
            await asyncio.sleep(wait)

    def _set_caught_up(self, value: bool) -> None:
        self.core.caught_up = value
        self.core.metrics.caught_up.set(1 if value else 0)

    async def _follow(self) -> None:
        request = es_pb.WatchEpisodesRequest(cursor=self.position, backfill=True)
        call = self.stub.WatchEpisodes(request)
        queue: asyncio.Queue = asyncio.Queue(maxsize=self.read_ahead)
        reader = asyncio.create_task(self._read(call, queue), name="log-replay-watch-reader")
        stream_caught_up = False
        try:
            while True:
                item = await queue.get()
                events = []
                while True:
                    if isinstance(item, BaseException):
                        raise item
                    if item is _END:
                        await self._process(events)
                        return
                    if item.type == es_pb.EPISODE_EVENT_TYPE_CAUGHT_UP:
                        stream_caught_up = True
                    elif item.type == es_pb.EPISODE_EVENT_TYPE_STORED:
                        events.append(item)
                    if len(events) >= self.batch or queue.empty():
                        break
                    item = queue.get_nowait()
                self.lag = queue.qsize() + len(events)
                self.core.metrics.lag.set(self.lag)
                await self._process(events)
                self.lag = queue.qsize()
                self.core.metrics.lag.set(self.lag)
                self._set_caught_up(stream_caught_up and queue.empty())
        finally:
            call.cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    @staticmethod
    async def _read(call, queue: asyncio.Queue) -> None:
        try:
            async for event in call:
                await queue.put(event)
            await queue.put(_END)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # handed to the processing loop, which retries
            await queue.put(e)

    async def _fetch(self, episode_id: str):
        async with self._fetch_slots:
            try:
                reply = await retry_idempotent_async(
                    lambda: self.stub.GetEpisode(es_pb.GetEpisodeRequest(episode_id=episode_id), timeout=self.timeout_s), self.retry
                )
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise
            return reply.episode

    async def _process(self, events: list) -> None:
        """Reads, labels and buffers one batch of STORED events, then saves the cursor."""
        if not events:
            return
        core = self.core
        try:
            messages = await asyncio.gather(*(self._fetch(ev.episode.episode_id) for ev in events))
        except grpc.RpcError as e:
            raise DependencyError("episode_store", e) from e
        decoded = await core.run_io(_decode_all, messages, core.cache.catalogue)
        async with core.ingest_lock:
            version = core.sd_version
            keep = [i for i, (ep, _) in enumerate(decoded) if ep is not None]
            try:
                known = await core.labeller.known_tasks(version)
                tasks = [core.labeller.tasks_for(decoded[i][0].task, known) for i in keep]
                verdicts = await self._classify([messages[i].final_image for i in keep], tasks, version)
            except (grpc.RpcError, RuntimeError) as e:
                raise DependencyError("success_detector", e) from e
            label_of = dict(zip(keep, verdicts))
            items, prev, skipped = [], self.position, []
            new_by_task: dict[str, int] = {}
            for i, ev in enumerate(events):
                episode, reason = decoded[i]
                is_new = ev.cursor > self.refill_until
                if episode is not None and label_of[i] is None:
                    episode, reason = None, "sd_rejected"
                if episode is None:
                    if is_new:
                        skipped.append(reason)
                else:
                    items.append((episode, label_of[i], prev))
                    if is_new:
                        new_by_task[episode.task] = new_by_task.get(episode.task, 0) + 1
                prev = ev.cursor
            await core.run_io(core.cache.add, items)
            last = events[-1].cursor
            if last > self.refill_until:
                state = core.state
                state.cursor = last
                for task, n in new_by_task.items():
                    state.processed_by_task[task] = state.processed_by_task.get(task, 0) + n
                    state.episodes_processed += n
                refill = core.cache.refill_cursor()
                state.refill_cursor = refill if refill is not None else last
                try:
                    await core.save_state()
                except Exception as e:
                    raise DependencyError("cursor_storage", e) from e
            self.position = last
        for i, ev in enumerate(events):
            if ev.cursor > self.refill_until and label_of.get(i) is not None:
                self._count_new(decoded[i][0].task, label_of[i], messages[i])
        for reason in skipped:
            core.metrics.skipped.labels(reason).inc()
        await core.notify()

    async def _classify(self, images, tasks, version) -> list[dict[str, bool] | None]:
        """Verdicts per image; an image the SD refuses (INVALID_ARGUMENT) gets None, the rest still count."""
        try:
            return list(await self.core.labeller.classify(images, tasks, version))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
        out: list[dict[str, bool] | None] = []
        for image, ts in zip(images, tasks):  # isolate the image the SD refuses
            try:
                out += await self.core.labeller.classify([image], [ts], version)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                log.warning("log_replay: success_detector refused an image: %s", e.details())
                out.append(None)
        return out

    def _count_new(self, task: str, verdicts: dict[str, bool], msg) -> None:
        m = self.core.metrics
        m.processed.labels(task).inc()
        if task in verdicts:
            m.labelled.labels(task).inc()
            if verdicts[task]:
                m.sd_successes.labels(task).inc()
        if task in msg.ground_truth_success:
            m.gt_episodes.labels(task).inc()
            if msg.ground_truth_success[task]:
                m.gt_successes.labels(task).inc()


def _decode_all(messages, catalogue):
    """(Episode or None, skip reason) per message (blocking: PNG/JPEG decoding)."""
    out = []
    for msg in messages:
        if msg is None:
            out.append((None, "not_found"))
            continue
        try:
            out.append((episode_from_proto(msg, catalogue=catalogue), ""))
        except EpisodeDecodeError as e:
            log.warning("log_replay: skipping episode %s: %s", msg.episode_id, e)
            out.append((None, e.reason))
    return out


class DependencyError(Exception):
    """A dependency call failed; the batch is abandoned and retried from the same cursor."""

    def __init__(self, dependency: str, cause: BaseException):
        super().__init__(f"{dependency}: {_describe(cause)}")
        self.dependency, self.cause = dependency, cause


def _describe(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError):
        return f"{e.code().name}: {e.details()}"
    return f"{type(e).__name__}: {e}"
