"""episode_store: ``serve(config)`` and an in-process handle for tests and local runs.

Usage::

    serve(load_config())                      # blocks until SIGTERM/SIGINT (python -m mtopt.episode_store)

    store = await start_episode_store(config)  # in-process: tests, `mtopt up`
    stub = EpisodeStoreStub(grpc.aio.insecure_channel(f"localhost:{store.port}"))
    ...
    await store.stop()
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry

from mtopt.episode_store.config import EpisodeStoreConfig
from mtopt.episode_store.metrics import StoreMetrics
from mtopt.episode_store.servicer import EpisodeStoreServicer
from mtopt.episode_store.storage import EpisodeBackend, LocalDirBackend, MinioBackend, ObjectStoreBackend
from mtopt.episode_store.watch import WatchHub
from mtopt.serving import GrpcService, MetricsServer, RunningService, run_service
from mtopt.serving.s3 import s3_backend_args
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import episode_store_pb2, episode_store_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = episode_store_pb2.DESCRIPTOR.services_by_name["EpisodeStore"].full_name


def build_backend(config: EpisodeStoreConfig) -> EpisodeBackend:
    """The storage backend the config asks for (the local one takes its directory's lock)."""
    if config.backend == "s3":
        return MinioBackend(**s3_backend_args(config), settle_s=config.watch_settle_s,
                            max_connections=max(config.io_workers, 10),
                            gather_s=config.commit_gather_s, quiet_s=config.commit_quiet_s, max_writes=config.commit_max_writes)
    return LocalDirBackend(config.directory, fsync=config.fsync, gather_s=config.commit_gather_s, quiet_s=config.commit_quiet_s,
                           max_writes=config.commit_max_writes)


@dataclasses.dataclass
class EpisodeStore(RunningService):
    """A running episode_store: its gRPC service, servicer, backend and metrics."""

    config: EpisodeStoreConfig
    service: GrpcService
    servicer: EpisodeStoreServicer
    backend: EpisodeBackend
    metrics: StoreMetrics


async def start_episode_store(
    config: EpisodeStoreConfig, *, backend: EpisodeBackend | None = None, registry: CollectorRegistry | None = None,
    catalogue: TaskCatalogue | None = None, readiness_interval_s: float = 5.0,
) -> EpisodeStore:
    """Builds and starts the store; health turns SERVING once the backend answers."""
    catalogue = catalogue if catalogue is not None else TaskCatalogue.load(config.tasks)
    backend = backend if backend is not None else build_backend(config)
    registry = registry if registry is not None else CollectorRegistry()
    metrics = StoreMetrics(registry)
    if isinstance(backend, ObjectStoreBackend):
        backend.on_commit = metrics.observe_commit
        metrics.indexed_episodes.set_function(lambda: backend.indexed_episodes)
    executor = ThreadPoolExecutor(max_workers=config.io_workers, thread_name_prefix="episode-store-io")

    async def run_io(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    hub = WatchHub(backend, run_io, poll_s=config.watch_poll_s)
    servicer = EpisodeStoreServicer(
        backend, hub, metrics, executor, catalogue=catalogue, max_episode_bytes=config.max_episode_bytes,
        image_shape=tuple(config.image_shape) if config.image_shape else None, inline_bytes=config.inline_validate_bytes,
    )

    async def ready() -> bool:
        await run_io(backend.ping)
        if isinstance(backend, ObjectStoreBackend):
            await run_io(backend.load_index)  # reads the whole log once: ids answer from memory after
        return True

    async def close_backend() -> None:
        await servicer.drain()
        await run_io(backend.close)
        executor.shutdown(wait=False)

    service = GrpcService(
        name=SERVICE_NAME,
        register=lambda server: episode_store_pb2_grpc.add_EpisodeStoreServicer_to_server(servicer, server),
        port=config.port,
        host=config.host,
        metrics=MetricsServer(registry, config.metrics_port),
        readiness=ready,
        readiness_interval_s=readiness_interval_s,
        grace_s=config.grace_s,
        on_stopping=[hub.close],
        on_stopped=[close_backend],
    )
    try:
        try:  # creates the bucket if storage already answers; readiness keeps trying otherwise
            await run_io(backend.ping)
        except Exception as e:
            log.warning("episode storage not reachable yet (health stays NOT_SERVING until it is): %s", e)
        await hub.start()
        await service.start()
    except BaseException:
        await hub.close()
        backend.close()
        executor.shutdown(wait=False)
        raise
    log.info("episode_store on port %d (backend %s), metrics on %d", service.port, config.backend, service.metrics.port)
    return EpisodeStore(config, service, servicer, backend, metrics)


async def serve_async(config: EpisodeStoreConfig) -> None:
    store = await start_episode_store(config)
    await store.service.run_until_signal()


def serve(config: EpisodeStoreConfig) -> None:
    """Runs episode_store until SIGTERM/SIGINT, then stops gracefully (the process entry point)."""
    run_service(lambda: serve_async(config))
