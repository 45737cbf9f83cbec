"""GrpcService's "liveness" health name (asked by the chart's liveness and startup probes) is
SERVING while the process runs, even while readiness ("") is NOT_SERVING."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mtopt.serving.server import LIVENESS, GrpcService


def test_liveness_serving_while_not_ready():
    async def scenario():
        service = GrpcService(name="mtopt.v1.Test", register=lambda server: None, port=0, host="127.0.0.1",
                              readiness=lambda: False, readiness_interval_s=0.05, grace_s=0.1)
        await service.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                await asyncio.sleep(0.2)
                overall = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                live = await stub.Check(health_pb2.HealthCheckRequest(service=LIVENESS), timeout=5)
        finally:
            await service.stop()
        return overall.status, live.status

    overall, live = asyncio.run(scenario())
    assert overall == health_pb2.HealthCheckResponse.NOT_SERVING
    assert live == health_pb2.HealthCheckResponse.SERVING
