"""Relabelling: re-classify every buffered episode with an SD version (MT-Opt's way of adding a
task to a running system: a new SD version that knows it, and the old episodes get its labels).

A run switches the version new episodes are labelled with first (under the follower's ingest
lock, so no batch labelled by the old version lands after the run's snapshot), then relabels
the snapshot in Classify-sized chunks, from the decoded final images already in memory.
Runs are keyed by (version, tasks): asking again for a running or finished run returns it.
One run executes at a time; a new request waits for the previous one.

`poll_serving()` asks the SD for its serving version every ``poll_s`` seconds and starts a run
for every new one it sees.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import grpc

from mtopt.episode_codec import encode_image
from mtopt.log_replay.follower import ReplayCore
from mtopt.v1 import log_replay_pb2 as pb
from mtopt.v1 import success_detector_pb2 as sd_pb

log = logging.getLogger(__name__)


class RelabelRejected(Exception):
    """A Relabel request that cannot start; ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason = code, reason


@dataclasses.dataclass
class RelabelRun:
    sd_version: int
    tasks: tuple[str, ...]
    state: int = pb.RELABEL_STATE_RUNNING
    episodes_done: int = 0
    episodes_total: int = 0
    started: float = dataclasses.field(default_factory=time.time)
    finished: float = 0.0
    error: str = ""

    @property
    def key(self) -> tuple[int, tuple[str, ...]]:
        return (self.sd_version, self.tasks)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_proto(self) -> pb.RelabelProgress:
        msg = pb.RelabelProgress(sd_version=self.sd_version, state=self.state, episodes_done=self.episodes_done,
                                 episodes_total=self.episodes_total, error=self.error)
        msg.started_time.FromNanoseconds(int(self.started * 1e9))
        if self.finished:
            msg.finished_time.FromNanoseconds(int(self.finished * 1e9))
        return msg


class Relabeller:
    """Starts, deduplicates and runs relabelling (see the module docstring)."""

    def __init__(self, core: ReplayCore, *, chunk: int = 32, poll_s: float = 30.0):
        self.core, self.chunk, self.poll_s = core, chunk, poll_s
        self.runs: dict[tuple[int, tuple[str, ...]], RelabelRun] = {}
        self.latest: RelabelRun | None = None
        self._serial = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    def restore(self) -> None:
        """Takes the last finished run from the loaded state (GetStats shows it after a restart)."""
        saved = self.core.state.relabel
        if saved and self.latest is None:
            self.latest = RelabelRun(**dict(saved, tasks=tuple(saved.get("tasks", ()))))
            if self.latest.state == pb.RELABEL_STATE_DONE:
                self.runs[self.latest.key] = self.latest

    async def request(self, sd_version: int, tasks: list[str]) -> tuple[RelabelRun, bool]:
        """(the run for this version and tasks, whether it already existed); RelabelRejected if it cannot start."""
        labeller, catalogue = self.core.labeller, self.core.cache.catalogue
        unknown = [t for t in tasks if t not in catalogue]
        if unknown:
            raise RelabelRejected(grpc.StatusCode.INVALID_ARGUMENT, "unknown_task",
                                  f"unknown tasks {unknown}; known tasks: {', '.join(catalogue.names)}")
        if sd_version < 0:
            raise RelabelRejected(grpc.StatusCode.INVALID_ARGUMENT, "sd_version", f"sd_version must be >= 0, got {sd_version}")
        try:
            info = await labeller.get_version(sd_version)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise RelabelRejected(grpc.StatusCode.NOT_FOUND, "sd_version", f"success_detector has no version {sd_version}") from None
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise RelabelRejected(grpc.StatusCode.FAILED_PRECONDITION, "sd_not_ready", "success_detector has no READY version yet") from None
            raise
        if info.state != sd_pb.SD_VERSION_STATE_READY or info.version <= 0:
            raise RelabelRejected(grpc.StatusCode.FAILED_PRECONDITION, "sd_not_ready",
                                  f"SD version {info.version or sd_version} is {sd_pb.SdVersionState.Name(info.state)}, not READY; "
                                  "retry once it is")
        known = await labeller.known_tasks(info.version)
        missing = [t for t in tasks if t not in known]
        if missing:
            raise RelabelRejected(grpc.StatusCode.INVALID_ARGUMENT, "unknown_task",
                                  f"SD version {info.version} does not score tasks {missing}; it knows {sorted(known)}")
        run_tasks = tuple(sorted(set(tasks) or known))
        existing = self.runs.get((info.version, run_tasks))
        if existing is not None and existing.state in (pb.RELABEL_STATE_RUNNING, pb.RELABEL_STATE_DONE):
            return existing, True
        run = RelabelRun(info.version, run_tasks)
        self.runs[run.key] = run
        task = asyncio.create_task(self._run(run), name=f"relabel-v{info.version}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run, False

    async def _run(self, run: RelabelRun) -> None:
        core = self.core
        async with self._serial:
            self.latest = run
            try:
                async with core.ingest_lock:
                    core.state.sd_version = run.sd_version
                    core.metrics.sd_version.set(run.sd_version)
                    ids = await core.run_io(core.cache.episode_ids)
                run.episodes_total = len(ids)
                core.metrics.relabel_total.set(run.episodes_total)
                wanted = set(run.tasks)
                for i in range(0, len(ids), self.chunk):
                    finals = await core.run_io(core.cache.final_images, ids[i : i + self.chunk])
                    images = await core.run_io(lambda: [encode_image(img, "png") for _, _, img in finals])
                    tasks = [[t for t in core.labeller.tasks_for(task, wanted)] for _, task, _ in finals]
                    verdicts = await core.labeller.classify(images, tasks, run.sd_version)
                    for (episode_id, _, _), outcome in zip(finals, verdicts):
                        await core.run_io(core.cache.relabel, episode_id, outcome)
                    run.episodes_done = min(run.episodes_total, i + self.chunk)
                    core.metrics.relabelled.inc(len(finals))
                    core.metrics.relabel_done.set(run.episodes_done)
                    await core.notify()
                run.state = pb.RELABEL_STATE_DONE
            except asyncio.CancelledError:
                run.state, run.error = pb.RELABEL_STATE_FAILED, "log_replay stopped before the run finished"
                raise
            except Exception as e:
                detail = e.details() if isinstance(e, grpc.RpcError) else str(e)
                run.state, run.error = pb.RELABEL_STATE_FAILED, f"{type(e).__name__}: {detail}"
                log.warning("log_replay: relabelling with SD version %d failed: %s", run.sd_version, run.error)
            finally:
                run.finished = time.time()
                core.state.relabel = run.to_dict()
                try:
                    await core.save_state()
                except Exception as e:  # the next cursor write carries it
                    log.warning("log_replay: could not persist the relabel result: %s", e)

    async def poll_serving(self) -> None:
        """Relabels with every new serving SD version, checking every poll_s seconds (until cancelled)."""
        core = self.core
        while not core.closed:
            try:
                info = await core.labeller.serving_version()
                if info is not None and info.version != core.state.serving_seen:
                    log.info("log_replay: SD version %d is serving now; relabelling the buffers", info.version)
                    await self.request(info.version, [])
                    core.state.serving_seen = info.version
            except asyncio.CancelledError:
                raise
            except Exception as e:
                core.metrics.dependency_errors.labels("success_detector").inc()
                log.warning("log_replay: polling the serving SD version failed: %s", e)
            await asyncio.sleep(self.poll_s)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
