"""success_detector: ``serve(config)`` and an in-process handle for tests and local runs.

Usage::

    serve(load_config())                                  # blocks until SIGTERM/SIGINT (python -m mtopt.success_detector)

    sd = await start_success_detector(config)             # in-process: tests, `mtopt up`
    stub = SuccessDetectorStub(grpc.aio.insecure_channel(f"localhost:{sd.port}"))
    ...
    await sd.stop()
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry

from mtopt.model_registry.client import AsyncRegistryClient, RegistryClient
from mtopt.model_registry.objects import LocalDirObjects, MinioObjects, ObjectStore
from mtopt.serving import GrpcService, MetricsServer, RunningService, run_service
from mtopt.serving.s3 import s3_backend_args
from mtopt.success_detector.config import SuccessDetectorConfig
from mtopt.success_detector.examples import ExampleBook
from mtopt.success_detector.metrics import SdMetrics
from mtopt.success_detector.servicer import SuccessDetectorServicer
from mtopt.success_detector.storage import SdStorage
from mtopt.success_detector.training import TrainSettings
from mtopt.success_detector.versions import VersionManager, VersionSettings
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import success_detector_pb2, success_detector_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = success_detector_pb2.DESCRIPTOR.services_by_name["SuccessDetector"].full_name


def build_objects(config: SuccessDetectorConfig) -> ObjectStore:
    """The object store the config asks for (the local one takes its directory's lock)."""
    if config.backend == "s3":
        return MinioObjects(**s3_backend_args(config), max_connections=max(config.io_workers, 10))
    return LocalDirObjects(config.directory, fsync=config.fsync)


def load_catalogue() -> TaskCatalogue:
    """The task catalogue of MTOPT_TASKS (a YAML file), else the built-in one."""
    return TaskCatalogue.load(os.environ.get("MTOPT_TASKS") or None)


@dataclasses.dataclass
class SuccessDetectorServer(RunningService):
    """A running success_detector: its gRPC service, servicer, examples, versions and metrics."""

    config: SuccessDetectorConfig
    service: GrpcService
    servicer: SuccessDetectorServicer
    book: ExampleBook
    versions: VersionManager
    metrics: SdMetrics


async def start_success_detector(
    config: SuccessDetectorConfig, *, objects: ObjectStore | None = None, catalogue: TaskCatalogue | None = None,
    registry: CollectorRegistry | None = None, readiness_interval_s: float | None = None,
) -> SuccessDetectorServer:
    """Builds and starts the service; health turns SERVING once the example storage and the model
    registry answer and the examples and versions are loaded (it keeps trying until they do)."""
    catalogue = catalogue if catalogue is not None else load_catalogue()
    objects = objects if objects is not None else build_objects(config)
    storage = SdStorage(objects)
    prometheus = registry if registry is not None else CollectorRegistry()
    metrics = SdMetrics(prometheus, catalogue.names)
    io_pool = ThreadPoolExecutor(max_workers=config.io_workers, thread_name_prefix="sd-io")
    infer_pool = ThreadPoolExecutor(max_workers=config.inference_workers, thread_name_prefix="sd-infer")
    device = config.torch_device()

    async def run_io(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(io_pool, fn, *args)

    async def run_infer(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(infer_pool, fn, *args)

    registry_client = AsyncRegistryClient(config.registry_address, timeout_s=config.registry_timeout_s)
    sync_registry = RegistryClient(config.registry_address, timeout_s=config.registry_timeout_s)
    book = ExampleBook(storage, catalogue, config.image_size, run_io)
    book.listeners.append(metrics.set_examples)
    settings = VersionSettings(
        train=TrainSettings(config.image_size, config.channels, config.train_steps, config.batch_size, config.learning_rate,
                            config.eval_fraction, config.threshold, device, tower_stem=config.tower_stem),
        max_train_steps=config.max_train_steps, max_pending=config.max_pending_versions, max_loaded=config.max_loaded_versions,
        shared_storage=objects.shared, train_timeout_s=config.train_timeout_s, registry_timeout_s=config.registry_timeout_s,
    )
    versions = VersionManager(settings, catalogue, storage, book, registry_client, sync_registry, run_io, run_infer)
    versions.listeners.append(metrics.on_version)
    servicer = SuccessDetectorServicer(book, versions, metrics, catalogue, max_classify_images=config.max_classify_images,
                                       max_examples_per_request=config.max_examples_per_request)
    load_lock = asyncio.Lock()

    async def ready() -> bool:
        """Storage answers, registry answers; the first success also loads examples and versions."""
        await run_io(storage.ping)
        async with load_lock:
            if not book.loaded:
                await book.load()
            if not versions.loaded:
                await versions.load()
                return True
        await versions.refresh_serving()
        return True

    async def close() -> None:
        await versions.close()
        await registry_client.close()
        sync_registry.close()
        await run_io(storage.close)
        io_pool.shutdown(wait=False)
        infer_pool.shutdown(wait=False)

    service = GrpcService(
        name=SERVICE_NAME,
        register=lambda server: success_detector_pb2_grpc.add_SuccessDetectorServicer_to_server(servicer, server),
        port=config.port,
        host=config.host,
        metrics=MetricsServer(prometheus, config.metrics_port),
        readiness=ready,
        readiness_interval_s=readiness_interval_s if readiness_interval_s is not None else config.refresh_s,
        readiness_timeout_s=max(60.0, 2 * config.registry_timeout_s),
        grace_s=config.grace_s,
        on_stopped=[close],
    )
    try:
        await service.start()
    except BaseException:
        await registry_client.close()
        sync_registry.close()
        objects.close()
        io_pool.shutdown(wait=False)
        infer_pool.shutdown(wait=False)
        raise
    log.info("success_detector on port %d (backend %s, registry %s, device %s), metrics on %d", service.port, config.backend,
             config.registry_address, device, service.metrics.port)
    return SuccessDetectorServer(config, service, servicer, book, versions, metrics)


async def serve_async(config: SuccessDetectorConfig) -> None:
    server = await start_success_detector(config)
    await server.service.run_until_signal()


def serve(config: SuccessDetectorConfig) -> None:
    """Runs success_detector until SIGTERM/SIGINT, then stops gracefully (the process entry point)."""
    run_service(lambda: serve_async(config))
