"""bellman: ``serve(config)`` and an in-process handle for tests and local runs.

Usage::

    serve(load_config())                    # blocks until SIGTERM/SIGINT (python -m mtopt.bellman)

    worker = await start_bellman(config)    # in-process: tests, `mtopt up`
    ...                                      # (source=... replaces the LogReplay stream)
    await worker.stop()
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from mtopt.bellman.config import BellmanConfig
from mtopt.bellman.metrics import BellmanMetrics
from mtopt.bellman.servicer import BellmanServicer
from mtopt.bellman.targets import TargetNetworkSource
from mtopt.bellman.worker import BatchSource, BellmanWorker, log_replay_source
from mtopt.model_registry.client import RegistryClient
from mtopt.serving import GrpcService, MetricsServer, RetryPolicy, RunningService, make_aio_channel, run_service
from mtopt.trainer.core import resolve_device
from mtopt.v1 import bellman_pb2, bellman_pb2_grpc, log_replay_pb2, log_replay_pb2_grpc, trainer_pb2, trainer_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = bellman_pb2.DESCRIPTOR.services_by_name["Bellman"].full_name
TRAINER_SERVICE = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name
LOG_REPLAY_SERVICE = log_replay_pb2.DESCRIPTOR.services_by_name["LogReplay"].full_name


@dataclasses.dataclass
class BellmanServer(RunningService):
    """A running Bellman worker: its status service, the worker and metrics."""

    config: BellmanConfig
    service: GrpcService
    worker: BellmanWorker
    metrics: BellmanMetrics


async def _serving(channel: grpc.aio.Channel, service: str) -> bool:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2.0)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def start_bellman(
    config: BellmanConfig, *, source: BatchSource | None = None, registry: CollectorRegistry | None = None,
    readiness_interval_s: float = 5.0,
) -> BellmanServer:
    """Starts the status service and the worker loop. Health turns SERVING once the target
    networks are loaded from the registry and the trainer and log_replay (unless ``source``
    replaces it) report SERVING. ``source`` opens a stream of TransitionBatches (tests, tools)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    prometheus = registry if registry is not None else CollectorRegistry()
    metrics = BellmanMetrics(prometheus, config.worker_name)
    client = RegistryClient(config.registry_address, timeout_s=config.call_timeout_s, retry=RetryPolicy(max_attempts=3))
    nets = TargetNetworkSource(client, config.model, config.target_lag_steps, resolve_device(config.device))
    trainer_channel = make_aio_channel(config.trainer_address, default_timeout_s=config.call_timeout_s)
    replay_channel = make_aio_channel(config.log_replay_address, default_timeout_s=config.call_timeout_s) if source is None else None
    if source is None:
        source = log_replay_source(log_replay_pb2_grpc.LogReplayStub(replay_channel), config)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bellman-compute")
    worker = BellmanWorker(config, nets, trainer_pb2_grpc.TrainerStub(trainer_channel), metrics, executor, source)
    task: asyncio.Task | None = None

    async def ready() -> bool:
        if nets.current is None or not await _serving(trainer_channel, TRAINER_SERVICE):
            return False
        return replay_channel is None or await _serving(replay_channel, LOG_REPLAY_SERVICE)

    async def stopping() -> None:
        worker.stop()
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), config.grace_s)
            except asyncio.TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def close() -> None:
        await trainer_channel.close()
        if replay_channel is not None:
            await replay_channel.close()
        client.close()
        executor.shutdown(wait=False)

    service = GrpcService(
        name=SERVICE_NAME,
        register=lambda server: bellman_pb2_grpc.add_BellmanServicer_to_server(BellmanServicer(worker), server),
        port=config.port, host=config.host, metrics=MetricsServer(prometheus, config.metrics_port), readiness=ready,
        readiness_interval_s=readiness_interval_s, grace_s=1.0, on_stopping=[stopping], on_stopped=[close],
    )
    try:
        await service.start()
    except BaseException:
        await close()
        raise
    task = asyncio.create_task(worker.run(), name=f"bellman-{worker.worker_id}")
    log.info("bellman worker %s on port %d (device %s), metrics on %d", worker.worker_id, service.port, nets.device, service.metrics.port)
    return BellmanServer(config, service, worker, metrics)


async def serve_async(config: BellmanConfig) -> None:
    server = await start_bellman(config)
    await server.service.run_until_signal()


def serve(config: BellmanConfig) -> None:
    """Runs the worker until SIGTERM/SIGINT, then stops gracefully (the process entry point)."""
    run_service(lambda: serve_async(config))
