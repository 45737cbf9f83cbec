"""model_registry: ``serve(config)`` and an in-process handle for tests and local runs.

Usage::

    serve(load_config())                          # blocks until SIGTERM/SIGINT (python -m mtopt.model_registry)

    registry = await start_model_registry(config)  # in-process: tests, `mtopt up`
    stub = ModelRegistryStub(grpc.aio.insecure_channel(f"localhost:{registry.port}"))
    ...
    await registry.stop()
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry

from mtopt.model_registry.config import ModelRegistryConfig
from mtopt.model_registry.metrics import RegistryMetrics
from mtopt.model_registry.objects import LocalDirObjects, MinioObjects, ObjectStore
from mtopt.model_registry.registry import Registry
from mtopt.model_registry.servicer import ModelRegistryServicer
from mtopt.model_registry.watch import WatchHub
from mtopt.serving import GrpcService, MetricsServer, RunningService, run_service
from mtopt.serving.s3 import s3_backend_args
from mtopt.v1 import model_registry_pb2, model_registry_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = model_registry_pb2.DESCRIPTOR.services_by_name["ModelRegistry"].full_name


def build_objects(config: ModelRegistryConfig) -> ObjectStore:
    """The object store the config asks for (the local one takes its directory's lock)."""
    if config.backend == "s3":
        return MinioObjects(**s3_backend_args(config), max_connections=max(config.io_workers, 10))
    return LocalDirObjects(config.directory, fsync=config.fsync)


@dataclasses.dataclass
class ModelRegistryServer(RunningService):
    """A running model_registry: its gRPC service, servicer, registry and metrics."""

    config: ModelRegistryConfig
    service: GrpcService
    servicer: ModelRegistryServicer
    registry: Registry
    metrics: RegistryMetrics


async def start_model_registry(
    config: ModelRegistryConfig, *, objects: ObjectStore | None = None, registry: CollectorRegistry | None = None,
    readiness_interval_s: float = 5.0,
) -> ModelRegistryServer:
    """Builds and starts the registry; health turns SERVING once the storage answers and every
    model is loaded from it."""
    objects = objects if objects is not None else build_objects(config)
    prometheus = registry if registry is not None else CollectorRegistry()
    metrics = RegistryMetrics(prometheus)
    executor = ThreadPoolExecutor(max_workers=config.io_workers, thread_name_prefix="model-registry-io")
    models = Registry(objects, ring_size=config.event_ring, snapshot_every=config.snapshot_every)
    models.listeners.append(metrics.observe_events)

    async def run_io(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    hub = WatchHub(models, run_io, poll_s=config.poll_s, poll=objects.shared)
    servicer = ModelRegistryServicer(
        models, hub, metrics, executor, default_alias=config.default_alias, max_artifact_bytes=config.max_artifact_bytes,
        max_version_bytes=config.max_version_bytes, chunk_bytes=config.chunk_bytes,
    )

    async def ready() -> bool:
        await run_io(models.ensure_loaded)
        return True

    async def close() -> None:
        await servicer.drain()
        if models.loaded:
            await run_io(models.close)
        await run_io(objects.close)
        executor.shutdown(wait=False)

    service = GrpcService(
        name=SERVICE_NAME,
        register=lambda server: model_registry_pb2_grpc.add_ModelRegistryServicer_to_server(servicer, server),
        port=config.port,
        host=config.host,
        metrics=MetricsServer(prometheus, config.metrics_port),
        readiness=ready,
        readiness_interval_s=readiness_interval_s,
        grace_s=config.grace_s,
        on_stopping=[hub.close],
        on_stopped=[close],
    )
    try:
        try:  # loads now if storage already answers; readiness keeps trying otherwise
            await run_io(models.ensure_loaded)
        except Exception as e:
            log.warning("model storage not reachable yet (health stays NOT_SERVING until it is): %s", e)
        await hub.start()
        await service.start()
    except BaseException:
        await hub.close()
        objects.close()
        executor.shutdown(wait=False)
        raise
    log.info("model_registry on port %d (backend %s), metrics on %d", service.port, config.backend, service.metrics.port)
    return ModelRegistryServer(config, service, servicer, models, metrics)


async def serve_async(config: ModelRegistryConfig) -> None:
    server = await start_model_registry(config)
    await server.service.run_until_signal()


def serve(config: ModelRegistryConfig) -> None:
    """Runs model_registry until SIGTERM/SIGINT, then stops gracefully (the process entry point)."""
    run_service(lambda: serve_async(config))
