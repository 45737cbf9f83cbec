"""An async gRPC server with the parts every mtopt service needs.

`GrpcService` wraps a ``grpc.aio`` server (so a long-lived stream costs a coroutine, not a
thread) and adds: the standard ``grpc.health.v1`` service, which reports NOT_SERVING until a
readiness callback says the service's dependencies answer and SERVING after; gRPC server
reflection; the Prometheus metrics HTTP server on its own port; and an orderly shutdown
(health NOT_SERVING, stop accepting, grace period for in-flight calls, flush, close).

Usage (inside a service's ``server.py``)::

    service = GrpcService(
        name="mtopt.v1.EpisodeStore",
        register=lambda server: episode_store_pb2_grpc.add_EpisodeStoreServicer_to_server(servicer, server),
        port=config.port, metrics=MetricsServer(registry, config.metrics_port),
        readiness=backend.ping, on_stopping=servicer.close_streams, on_stopped=backend.close,
    )
    await service.start()
    await service.run_until_signal()      # SIGTERM / SIGINT -> graceful stop
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from mtopt.serving.lifecycle import wait_for_signal
from mtopt.serving.metrics import MetricsServer

log = logging.getLogger(__name__)

Readiness = Callable[[], "bool | Awaitable[bool]"]
Hook = Callable[[], "None | Awaitable[None]"]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVENESS = "liveness"
"""Health service name that reports SERVING from start until stop (for liveness probes)."""

# Keepalive and message-size defaults for fleet-facing servers: robots keep streams open for
# hours behind NATs and load balancers, so the server pings idle connections and tolerates
# client pings.
DEFAULT_SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
)


async def _call(fn: Callable, *args):
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class GrpcService:
    """One service's gRPC server, health, reflection and metrics, started and stopped together."""

    def __init__(
        self,
        *,
        name: str,
        register: Callable[[grpc.aio.Server], None],
        port: int,
        host: str = "[::]",
        metrics: MetricsServer | None = None,
        readiness: Readiness | None = None,
        readiness_interval_s: float = 5.0,
        readiness_timeout_s: float = 5.0,
        grace_s: float = 10.0,
        on_stopping: Sequence[Hook] = (),
        on_stopped: Sequence[Hook] = (),
        options: Sequence[tuple[str, int | str]] = DEFAULT_SERVER_OPTIONS,
    ):
        """
        Args:
          name: full proto service name (e.g. "mtopt.v1.EpisodeStore"), used for health and
            reflection.
          register: adds the servicer(s) to the server.
          port: gRPC port; 0 picks a free one (see `port` after start()).
          metrics: the service's metrics HTTP server, started and stopped with it.
          readiness: returns (or awaits) True once the dependencies answer; polled every
            `readiness_interval_s` (faster while not ready); health follows it. None: ready.
          grace_s: how long in-flight calls may run on after a stop begins.
          on_stopping: called first on stop (e.g. end watch streams so they do not hold
            the grace period).
          on_stopped: called after the gRPC server has stopped (flush, close backends).
        """
        self.name = name
        self._register = register
        self._address = f"{host}:{port}"
        self.metrics = metrics
        self._readiness = readiness
        self._readiness_interval_s = readiness_interval_s
        self._readiness_timeout_s = readiness_timeout_s
        self.grace_s = grace_s
        self._on_stopping = list(on_stopping)
        self._on_stopped = list(on_stopped)
        self._options = list(options)
        self.health = HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._port: int | None = None
        self._ready = False
        self._stop_event: asyncio.Event | None = None
        self._readiness_task: asyncio.Task | None = None
        self._stopped: asyncio.Future | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("GrpcService.port is only known after start()")
        return self._port

    @property
    def ready(self) -> bool:
        """Whether health currently reports SERVING."""
        return self._ready

    async def start(self) -> None:
        """Binds the port, starts serving (health NOT_SERVING) and the readiness loop."""
        if self._server is not None:
            raise RuntimeError("GrpcService.start() called twice")
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._stopped = loop.create_future()
        server = grpc.aio.server(options=self._options)
        self._register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (self.name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
        try:
            self._port = server.add_insecure_port(self._address)
        except RuntimeError as e:
            raise OSError(f"cannot bind gRPC port {self._address}: {e}; set another port") from e
        await self.health.set("", NOT_SERVING)
        await self.health.set(self.name, NOT_SERVING)
        # "liveness" is SERVING while the process runs, whatever its dependencies do: the
        # Kubernetes liveness/startup probes ask for it, so a pod waiting for a dependency is
        # not restarted (readiness asks for "").
        await self.health.set(LIVENESS, SERVING)
        await server.start()
        self._server = server
        if self.metrics is not None:
            self.metrics.start()
        self._readiness_task = asyncio.create_task(self._readiness_loop(), name=f"{self.name}-readiness")
        log.info("%s listening on port %d", self.name, self._port)

    async def _probe(self) -> bool:
        if self._readiness is None:
            return True
        try:
            return bool(await asyncio.wait_for(_call(self._readiness), self._readiness_timeout_s))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a dependency that fails to answer is "not ready", never a crash
            log.warning("%s readiness check failed: %s", self.name, e)
            return False

    async def _set_ready(self, ready: bool) -> None:
        if ready != self._ready:
            log.info("%s health -> %s", self.name, "SERVING" if ready else "NOT_SERVING")
        self._ready = ready
        status = SERVING if ready else NOT_SERVING
        await self.health.set("", status)
        await self.health.set(self.name, status)

    async def _readiness_loop(self) -> None:
        assert self._stop_event is not None
        while not self._stop_event.is_set():
            await self._set_ready(await self._probe())
            interval = self._readiness_interval_s if self._ready else min(0.2, self._readiness_interval_s)
            try:
                await asyncio.wait_for(self._stop_event.wait(), interval)
            except asyncio.TimeoutError:
                pass

    async def wait_until_ready(self, timeout_s: float = 30.0) -> None:
        """Waits until health reports SERVING; TimeoutError names the service."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self._ready:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout_s}s: its readiness check keeps failing")
            await asyncio.sleep(0.02)

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, on_stopping hooks, stop accepting, grace, on_stopped hooks.

        Idempotent; concurrent callers all wait for the same stop.
        """
        if self._server is None or self._stop_event is None or self._stopped is None:
            return
        if self._stop_event.is_set():
            await asyncio.shield(self._stopped)
            return
        self._stop_event.set()
        grace = self.grace_s if grace_s is None else grace_s
        try:
            await self.health.enter_graceful_shutdown()
            if self._readiness_task is not None:
                self._readiness_task.cancel()
                await asyncio.gather(self._readiness_task, return_exceptions=True)
            for hook in self._on_stopping:
                await _call(hook)
            await self._server.stop(grace)
            for hook in self._on_stopped:
                try:
                    await _call(hook)
                except Exception:
                    log.exception("%s: shutdown hook %r failed", self.name, hook)
            if self.metrics is not None:
                self.metrics.stop()
            log.info("%s stopped", self.name)
        finally:
            if not self._stopped.done():
                self._stopped.set_result(None)

    async def wait_for_termination(self) -> None:
        """Returns once the service has stopped (by stop() or a signal)."""
        if self._stopped is None:
            raise RuntimeError("GrpcService.wait_for_termination() before start()")
        await asyncio.shield(self._stopped)

    async def run_until_signal(self) -> None:
        """Serves until SIGTERM or SIGINT (or stop()), then stops gracefully."""
        if self._stopped is None:
            raise RuntimeError("GrpcService.run_until_signal() before start()")
        signal_task = asyncio.create_task(wait_for_signal())
        stopped = asyncio.ensure_future(asyncio.shield(self._stopped))
        done, _ = await asyncio.wait({signal_task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if signal_task in done:
            log.info("%s: received %s, stopping (grace %.1fs)", self.name, signal_task.result().name, self.grace_s)
        else:
            signal_task.cancel()
            await asyncio.gather(signal_task, return_exceptions=True)
        await self.stop()


class RunningService:
    """Mixin of the handle a service's ``start_<service>()`` returns: the ports and the stop of its
    `GrpcService`, found in the handle's ``service`` attribute.

    Usage::

        @dataclasses.dataclass
        class TrainerServer(RunningService):
            config: TrainerConfig
            service: GrpcService
            ...
    """

    service: GrpcService

    @property
    def port(self) -> int:
        return self.service.port

    @property
    def metrics_port(self) -> int:
        assert self.service.metrics is not None
        return self.service.metrics.port

    async def stop(self, grace_s: float | None = None) -> None:
        await self.service.stop(grace_s)

    async def wait_for_termination(self) -> None:
        await self.service.wait_for_termination()
