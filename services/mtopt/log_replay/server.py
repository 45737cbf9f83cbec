"""log_replay: ``serve(config)`` and an in-process handle for tests and local runs.

Usage::

    serve(load_config())                         # blocks until SIGTERM/SIGINT (python -m mtopt.log_replay)

    replay = await start_log_replay(config)      # in-process: tests, `mtopt up`
    stub = LogReplayStub(grpc.aio.insecure_channel(f"localhost:{replay.port}"))
    ...
    await replay.stop()
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry

from mtopt.log_replay.buffer import ReplayCache
from mtopt.log_replay.config import LogReplayConfig
from mtopt.log_replay.follower import Follower, ReplayCore
from mtopt.log_replay.labeller import Labeller
from mtopt.log_replay.metrics import ReplayMetrics
from mtopt.log_replay.relabel import Relabeller
from mtopt.log_replay.servicer import LogReplayServicer
from mtopt.log_replay.state import CursorStore, ReplayState
from mtopt.model_registry.objects import LocalDirObjects, MinioObjects, ObjectStore
from mtopt.serving import GrpcService, MetricsServer, RetryPolicy, RunningService, make_aio_channel, run_service
from mtopt.serving.malloc import tune_malloc
from mtopt.serving.s3 import s3_backend_args
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import episode_store_pb2 as es_pb
from mtopt.v1 import episode_store_pb2_grpc as es_grpc
from mtopt.v1 import log_replay_pb2, log_replay_pb2_grpc
from mtopt.v1 import success_detector_pb2_grpc as sd_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = log_replay_pb2.DESCRIPTOR.services_by_name["LogReplay"].full_name


def build_cursor_objects(config: LogReplayConfig) -> ObjectStore:
    """Where cursor.json lives: a local directory (locked by this process) or the S3 bucket."""
    if config.backend == "s3":
        return MinioObjects(**s3_backend_args(config), max_connections=4)
    return LocalDirObjects(config.directory, fsync=config.fsync)


@dataclasses.dataclass
class LogReplay(RunningService):
    """A running log_replay: its gRPC service, servicer, core (buffers, state) and metrics."""

    config: LogReplayConfig
    service: GrpcService
    servicer: LogReplayServicer
    core: ReplayCore
    metrics: ReplayMetrics
    runner: "_Runner"

    @property
    def follower(self) -> Follower | None:
        return self.runner.follower


class _Runner:
    """Loads the persisted state, picks the SD version, then runs the follower and the SD poller."""

    def __init__(self, config: LogReplayConfig, core: ReplayCore, relabeller: Relabeller, store_stub):
        self.config, self.core, self.relabeller, self.store_stub = config, core, relabeller, store_stub
        self.loaded = False
        self.follower: Follower | None = None
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._run(), name="log-replay-runner"))

    async def _retrying(self, what: str, fn):
        wait = self.config.retry_backoff_s
        while True:
            try:
                result = await fn()
                if result is not None:
                    return result
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("log_replay: %s failed (will retry): %s", what, e)
            await asyncio.sleep(wait)
            wait = min(5.0, wait * 2)

    async def _run(self) -> None:
        core, config = self.core, self.config
        core.state = await self._retrying("loading the cursor", lambda: core.run_io(core.cursor_store.load))
        self.relabeller.restore()
        if core.state.sd_version == 0:
            serving = await self._retrying("waiting for a READY success detector version", core.labeller.serving_version)
            core.state.sd_version = core.state.serving_seen = serving.version
        core.metrics.sd_version.set(core.state.sd_version)
        self.loaded = True
        log.info("log_replay: resuming after cursor %r (%d episodes processed), SD version %d",
                 core.state.cursor, core.state.episodes_processed, core.state.sd_version)
        self.follower = Follower(
            core, self.store_stub, batch=config.classify_batch, read_ahead=config.read_ahead,
            fetch_concurrency=config.fetch_concurrency, timeout_s=config.call_timeout_s, backoff_s=config.retry_backoff_s,
            retry=_retry_policy(config),
        )
        self._tasks.append(asyncio.create_task(self.follower.run(), name="log-replay-follower"))
        self._tasks.append(asyncio.create_task(self.relabeller.poll_serving(), name="log-replay-sd-poller"))

    async def close(self) -> None:
        self.core.closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.relabeller.close()
        async with self.core.data_changed:
            self.core.data_changed.notify_all()


def _retry_policy(config: LogReplayConfig) -> RetryPolicy:
    return RetryPolicy(max_attempts=4, initial_backoff_s=config.retry_backoff_s, max_backoff_s=5.0)


async def start_log_replay(
    config: LogReplayConfig, *, registry: CollectorRegistry | None = None, catalogue: TaskCatalogue | None = None,
    cursor_objects: ObjectStore | None = None, readiness_interval_s: float = 5.0,
) -> LogReplay:
    """Builds and starts log_replay; health turns SERVING once the store and a READY SD answer."""
    catalogue = catalogue if catalogue is not None else TaskCatalogue.load(config.tasks)
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ReplayMetrics(registry, catalogue.names)
    executor = ThreadPoolExecutor(max_workers=config.io_workers, thread_name_prefix="log-replay-io")

    async def run_io(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    cursor_store = CursorStore(cursor_objects if cursor_objects is not None else build_cursor_objects(config))
    store_channel = make_aio_channel(config.store_address, default_timeout_s=config.call_timeout_s)
    sd_channel = make_aio_channel(config.success_detector_address, default_timeout_s=config.call_timeout_s)
    store_stub = es_grpc.EpisodeStoreStub(store_channel)
    labeller = Labeller(sd_grpc.SuccessDetectorStub(sd_channel), catalogue, mode=config.impersonation,
                        threshold=config.sd_threshold, timeout_s=config.call_timeout_s, retry=_retry_policy(config),
                        max_images=config.classify_batch)
    cache = ReplayCache(catalogue, config.buffer_bytes, config.step_penalty)
    core = ReplayCore(cache, labeller, cursor_store, ReplayState(), metrics, run_io)
    metrics.update_buffer(cache.counts(), 0, config.buffer_bytes)
    relabeller = Relabeller(core, chunk=config.classify_batch, poll_s=config.sd_poll_s)
    servicer = LogReplayServicer(
        core, relabeller, impersonation=config.impersonation, success_fraction=config.success_fraction,
        min_per_task=config.min_transitions_per_task, min_total=config.min_total_transitions, max_batch_size=config.max_batch_size,
    )
    runner = _Runner(config, core, relabeller, store_stub)

    async def ready() -> bool:
        await store_stub.ListEpisodes(es_pb.ListEpisodesRequest(page_size=1), timeout=config.call_timeout_s)
        serving = await labeller.serving_version()
        return runner.loaded and serving is not None

    async def close_clients() -> None:
        await store_channel.close()
        await sd_channel.close()
        await run_io(cursor_store.close)
        executor.shutdown(wait=False)

    service = GrpcService(
        name=SERVICE_NAME,
        register=lambda server: log_replay_pb2_grpc.add_LogReplayServicer_to_server(servicer, server),
        port=config.port, host=config.host, metrics=MetricsServer(registry, config.metrics_port),
        readiness=ready, readiness_interval_s=readiness_interval_s, readiness_timeout_s=config.call_timeout_s,
        grace_s=config.grace_s, on_stopping=[runner.close], on_stopped=[close_clients],
    )
    try:
        await service.start()
    except BaseException:
        await close_clients()
        raise
    runner.start()
    log.info("log_replay on port %d (impersonation %s, store %s, SD %s), metrics on %d", service.port, config.impersonation,
             config.store_address, config.success_detector_address, service.metrics.port)
    return LogReplay(config, service, servicer, core, metrics, runner)


async def serve_async(config: LogReplayConfig) -> None:
    replay = await start_log_replay(config)
    await replay.service.run_until_signal()


def serve(config: LogReplayConfig) -> None:
    """Runs log_replay until SIGTERM/SIGINT, then stops gracefully (the process entry point).

    Sets the process's malloc thresholds and arena cap first (`mtopt.serving.malloc`): encoding a
    sample batch allocates and frees megabytes, which with glibc's defaults cost ~3x the throughput
    in page faults (docs/results.md, replay_sample), and the decoding threads' arenas add to the
    footprint beyond the buffer budget (replay_memory)."""
    tune_malloc(config.malloc_mmap_threshold_bytes, config.malloc_trim_threshold_bytes, config.malloc_arena_max)
    run_service(lambda: serve_async(config))
