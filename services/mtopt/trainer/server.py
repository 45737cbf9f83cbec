"""trainer: ``serve(config)`` and an in-process handle for tests and local runs.

Usage::

    serve(load_config())                   # blocks until SIGTERM/SIGINT (python -m mtopt.trainer)

    trainer = await start_trainer(config)  # in-process: tests, `mtopt up`
    stub = TrainerStub(grpc.aio.insecure_channel(f"localhost:{trainer.port}"))
    ...
    await trainer.stop()                   # stops training, writes a final checkpoint
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry

from mtopt.model_registry.client import RegistryClient
from mtopt.model_registry.objects import LocalDirObjects, MinioObjects, ObjectStore
from mtopt.serving import GrpcService, MetricsServer, RetryPolicy, RunningService, run_service
from mtopt.serving.s3 import s3_backend_args
from mtopt.tasks import TaskCatalogue
from mtopt.trainer.checkpoints import CheckpointStore
from mtopt.trainer.config import TrainerConfig
from mtopt.trainer.core import Trainer
from mtopt.trainer.metrics import TrainerMetrics
from mtopt.trainer.servicer import TrainerServicer
from mtopt.v1 import trainer_pb2, trainer_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name


def build_objects(config: TrainerConfig) -> ObjectStore:
    """The checkpoint object store the config asks for (the local one takes its directory's lock)."""
    if config.backend == "s3":
        return MinioObjects(**s3_backend_args(config), max_connections=4)
    return LocalDirObjects(config.directory, fsync=config.fsync)


@dataclasses.dataclass
class TrainerServer(RunningService):
    """A running trainer: its gRPC service, servicer, the Trainer and metrics."""

    config: TrainerConfig
    service: GrpcService
    servicer: TrainerServicer
    trainer: Trainer
    metrics: TrainerMetrics


async def start_trainer(
    config: TrainerConfig, *, objects: ObjectStore | None = None, registry: CollectorRegistry | None = None,
    readiness_interval_s: float = 5.0,
) -> TrainerServer:
    """Builds and starts the trainer. Health turns SERVING once the checkpoint (if any) is
    restored and the registry answers with a version of the model (published now if it had none)."""
    catalogue = TaskCatalogue.load(config.tasks)
    objects = objects if objects is not None else build_objects(config)
    prometheus = registry if registry is not None else CollectorRegistry()
    metrics = TrainerMetrics(prometheus)
    client = RegistryClient(config.registry_address, timeout_s=config.registry_timeout_s, retry=RetryPolicy(max_attempts=3))
    trainer = Trainer(config, catalogue, client, CheckpointStore(objects, config.keep_checkpoints), metrics)
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="trainer-io")
    servicer = TrainerServicer(trainer, metrics, executor)

    def shutdown() -> None:
        trainer.stop()
        if trainer.ready.is_set():
            try:
                trainer.checkpoint()
            except Exception:
                log.exception("final checkpoint failed")

    async def stopping() -> None:
        await asyncio.get_running_loop().run_in_executor(executor, shutdown)

    def close() -> None:
        client.close()
        objects.close()
        executor.shutdown(wait=False)

    service = GrpcService(
        name=SERVICE_NAME,
        register=lambda server: trainer_pb2_grpc.add_TrainerServicer_to_server(servicer, server),
        port=config.port,
        host=config.host,
        metrics=MetricsServer(prometheus, config.metrics_port),
        readiness=trainer.ready.is_set,
        readiness_interval_s=readiness_interval_s,
        grace_s=config.grace_s,
        on_stopped=[stopping, close],
    )
    try:
        await service.start()
    except BaseException:
        close()
        raise
    trainer.start()
    log.info("trainer on port %d (device %s, checkpoints %s), metrics on %d", service.port, trainer.device, config.backend,
             service.metrics.port)
    return TrainerServer(config, service, servicer, trainer, metrics)


async def serve_async(config: TrainerConfig) -> None:
    server = await start_trainer(config)
    await server.service.run_until_signal()


def serve(config: TrainerConfig) -> None:
    """Runs the trainer until SIGTERM/SIGINT, then stops gracefully (the process entry point)."""
    run_service(lambda: serve_async(config))
