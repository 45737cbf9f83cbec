"""Shared infrastructure of the mtopt gRPC services.

- `config`: environment variables -> frozen, documented dataclasses (`from_env`).
- `server`: `GrpcService`, a grpc.aio server with health, reflection, metrics and graceful stop.
- `metrics`: `MetricsServer`, Prometheus /metrics of a per-service registry on its own port.
- `lifecycle`: SIGTERM/SIGINT handling and the process entry point (`run_service`).
- `client`: channels with default deadlines, `retry_idempotent` with backoff.
"""

from mtopt.serving.client import RetryPolicy, make_aio_channel, make_channel, retry_idempotent, retry_idempotent_async
from mtopt.serving.config import ConfigError, check, describe, from_env
from mtopt.serving.lifecycle import run_service, wait_for_signal
from mtopt.serving.metrics import MetricsServer
from mtopt.serving.server import GrpcService, RunningService

__all__ = [
    "ConfigError",
    "GrpcService",
    "MetricsServer",
    "RetryPolicy",
    "RunningService",
    "check",
    "describe",
    "from_env",
    "make_aio_channel",
    "make_channel",
    "retry_idempotent",
    "retry_idempotent_async",
    "run_service",
    "wait_for_signal",
]
