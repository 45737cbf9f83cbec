"""Shared service infrastructure: config from the environment, retries, deadlines, GrpcService."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter

from mtopt.episode_store.config import EpisodeStoreConfig, load_config
from mtopt.serving import ConfigError, GrpcService, MetricsServer, RetryPolicy, check, describe, from_env, retry_idempotent
from mtopt.serving.client import make_aio_channel, make_channel, retry_idempotent_async


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    name: str
    """Required name."""
    port: int = 50051
    """gRPC port."""
    ratio: float = 0.5
    """A ratio in [0, 1]."""
    verbose: bool = False
    """Say more."""
    directory: Path = Path("/tmp/x")
    """A directory."""
    shape: tuple[int, ...] = (64, 64, 3)
    """An image shape."""
    maybe: int | None = None
    """Optional number."""

    def __post_init__(self):
        check(0 <= self.ratio <= 1, "DEMO_RATIO", f"must lie in [0, 1], got {self.ratio}")


def test_from_env_parses_every_field_type():
    env = {"DEMO_NAME": "x", "DEMO_PORT": "0x10", "DEMO_RATIO": "0.25", "DEMO_VERBOSE": "Yes", "DEMO_DIRECTORY": "/data",
           "DEMO_SHAPE": "32, 32,3", "DEMO_MAYBE": "7"}
    c = from_env(DemoConfig, "DEMO_", env)
    assert c == DemoConfig("x", 16, 0.25, True, Path("/data"), (32, 32, 3), 7)
    assert from_env(DemoConfig, "DEMO_", {"DEMO_NAME": "y", "DEMO_MAYBE": "", "DEMO_SHAPE": ""}) == DemoConfig("y", shape=())
    assert from_env(DemoConfig, "DEMO_", {}, name="override").name == "override"
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "DEMO_NAME is required but not set (Required name.)"),
        ({"DEMO_NAME": "x", "DEMO_PORT": "http"}, "DEMO_PORT='http' is invalid: expected an integer"),
        ({"DEMO_NAME": "x", "DEMO_VERBOSE": "maybe"}, "DEMO_VERBOSE='maybe' is invalid: expected one of true/false"),
        ({"DEMO_NAME": "x", "DEMO_RATIO": "2"}, "DEMO_RATIO must lie in [0, 1], got 2.0"),
        ({"DEMO_NAME": "x", "DEMO_SHAPE": "1,b"}, "DEMO_SHAPE='1,b' is invalid"),
    ],
)
def test_config_errors_name_the_variable(env, message):
    with pytest.raises(ConfigError) as err:
        from_env(DemoConfig, "DEMO_", env)
    assert message in str(err.value)


def test_describe_lists_variables_with_docs():
    text = describe(DemoConfig, "DEMO_")
    assert "DEMO_NAME  (required)\n    Required name." in text
    assert "DEMO_SHAPE  default 64,64,3\n    An image shape." in text


def test_episode_store_config_from_environment(tmp_path):
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text("tasks:\n  - {index: 0, name: a, skill: s}\n")
    c = load_config({"MTOPT_EPISODE_STORE_BACKEND": "s3", "MTOPT_EPISODE_STORE_S3_ENDPOINT": "minio:9000",
                     "AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "MTOPT_TASKS": str(tasks),
                     "MTOPT_EPISODE_STORE_IMAGE_SHAPE": "64,64,3", "MTOPT_EPISODE_STORE_MAX_EPISODE_BYTES": "1_000_000"})
    assert (c.backend, c.s3_endpoint, c.s3_access_key, c.s3_secret_key, c.tasks) == ("s3", "minio:9000", "ak", "s3cr3t-value", tasks)
    assert c.image_shape == (64, 64, 3) and c.max_episode_bytes == 1_000_000
    assert "s3cr3t-value" not in repr(c)  # secrets stay out of logs
    c = load_config({"MTOPT_S3_ACCESS_KEY": "mine", "AWS_ACCESS_KEY_ID": "aws"})
    assert c.backend == "local" and c.s3_access_key == "mine"
    for env, variable in [
        ({"MTOPT_EPISODE_STORE_BACKEND": "gcs"}, "MTOPT_EPISODE_STORE_BACKEND must be one of local, s3"),
        ({"MTOPT_EPISODE_STORE_BACKEND": "s3", "MTOPT_EPISODE_STORE_S3_ENDPOINT": "m:9000"}, "MTOPT_S3_ACCESS_KEY/MTOPT_S3_SECRET_KEY"),
        ({"MTOPT_EPISODE_STORE_PORT": "70000"}, "MTOPT_EPISODE_STORE_PORT must be a port number"),
        ({"MTOPT_EPISODE_STORE_IMAGE_SHAPE": "64,64"}, "MTOPT_EPISODE_STORE_IMAGE_SHAPE must be empty or H,W,3"),
        ({"MTOPT_TASKS": str(tmp_path / "missing.yaml")}, "MTOPT_TASKS must name an existing task catalogue"),
    ]:
        with pytest.raises(ConfigError, match=variable.replace("/", ".")):
            load_config(env)
    assert EpisodeStoreConfig().port == 50051


class FakeRpcError(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code


def test_retry_idempotent_retries_only_retryable_codes():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)
        return "ok"

    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.1, multiplier=2, jitter=0)
    assert retry_idempotent(flaky, policy, sleep=sleeps.append) == "ok"
    assert sleeps == [0.1, 0.2]

    calls.clear()
    with pytest.raises(FakeRpcError):
        retry_idempotent(lambda: calls.append(1) or (_ for _ in ()).throw(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT)),
                         policy, sleep=sleeps.append)
    assert len(calls) == 1  # a bad request is not retried

    calls.clear()
    with pytest.raises(FakeRpcError):
        retry_idempotent(lambda: calls.append(1) or (_ for _ in ()).throw(FakeRpcError(grpc.StatusCode.UNAVAILABLE)),
                         RetryPolicy(max_attempts=3, jitter=0), sleep=lambda s: None)
    assert len(calls) == 3
    assert RetryPolicy(initial_backoff_s=1, max_backoff_s=3, jitter=0).backoff_s(10) == 3
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)

    async def go():
        n = []

        async def call():
            n.append(1)
            if len(n) < 2:
                raise FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)
            return len(n)

        return await retry_idempotent_async(call, RetryPolicy(initial_backoff_s=0.001))

    assert asyncio.run(go()) == 2


class _SlowHealth(health_pb2_grpc.HealthServicer):
    """A servicer whose Check takes longer than any default deadline here."""

    async def Check(self, request, context):
        await asyncio.sleep(5)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def test_grpc_service_lifecycle_and_default_deadlines(aio_loop):
    registry = CollectorRegistry()
    Counter("mtopt_demo_things_total", "Things.", registry=registry).inc()
    ready, stopped = {"ok": False}, []
    slow_server = {}

    async def start():
        service = GrpcService(
            name="grpc.health.v1.Health", register=lambda s: None, port=0, host="127.0.0.1",
            metrics=MetricsServer(registry, 0, host="127.0.0.1"), readiness=lambda: ready["ok"],
            readiness_interval_s=0.05, grace_s=1.0, on_stopped=[lambda: stopped.append(True)],
        )
        await service.start()
        slow = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(_SlowHealth(), slow)
        slow_server["port"] = slow.add_insecure_port("127.0.0.1:0")
        await slow.start()
        slow_server["server"] = slow
        return service

    service = aio_loop.run(start())
    try:
        import urllib.request

        body = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics.port}/metrics", timeout=5).read().decode()
        assert "mtopt_demo_things_total 1.0" in body
        with make_channel(f"127.0.0.1:{service.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
            ready["ok"] = True
            aio_loop.run(service.wait_until_ready(10))
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        # A call without a timeout still gets the channel's default deadline.
        with make_channel(f"127.0.0.1:{slow_server['port']}", default_timeout_s=0.2) as channel:
            with pytest.raises(grpc.RpcError) as err:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        async def aio_call():
            async with make_aio_channel(f"127.0.0.1:{slow_server['port']}", default_timeout_s=0.2) as channel:
                with pytest.raises(grpc.RpcError) as err:
                    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                return err.value.code()

        assert aio_loop.run(aio_call()) == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        aio_loop.run(service.stop())
        aio_loop.run(slow_server["server"].stop(0))
    assert stopped == [True]
    aio_loop.run(service.stop())  # idempotent
    assert stopped == [True]
