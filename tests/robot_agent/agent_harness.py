"""Helpers for the robot agent tests: a real in-process model_registry, client-side fault
injection, ONNX artifacts, test configs and a hang-guarded wait.

The registry is the real service (`mtopt.model_registry`, local-directory backend) on a free
port. Faults a healthy server never produces (a download stream cut mid-way, a registry without
WatchVersions) are injected on the robot's side of the channel by `FaultInjector`, so the agent
code under test is exactly what runs in production.
"""

from __future__ import annotations

import collections
import time
from typing import Callable

import grpc

from mtopt.tasks import TaskCatalogue

MODEL = "q_function"
CATALOGUE = TaskCatalogue.load()


def onnx_artifacts(seed: int) -> dict[str, bytes]:
    """q_tower.onnx + q_head.onnx of a small random Q-network (exported with torch, as the trainer does)."""
    import torch

    from mtopt.core.export import export_onnx_bytes
    from mtopt.core.networks import QNetwork

    torch.manual_seed(seed)
    return export_onnx_bytes(QNetwork(CATALOGUE.num_slots, image_size=64, channels=8))


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Polls ``condition`` until true; AssertionError after ``timeout`` (a hang guard, not a timing check)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def agent_config(tmp_path, **overrides):
    """An AgentConfig for tests: no metrics port, no fsync, fast retries, seeded."""
    from mtopt_agent.config import AgentConfig

    base = dict(robot_id="sim-0", spool_dir=tmp_path / "spool", spool_fsync=False, metrics_port=-1, seed=0,
                upload_initial_backoff_s=0.05, upload_max_backoff_s=0.3, poll_interval_s=0.2, drain_s=10.0,
                store_address="127.0.0.1:1")
    base.update(overrides)
    return AgentConfig(**base)


# -- the real model registry -------------------------------------------------------------------
class RegistryUnderTest:
    """model_registry in the test loop thread, with a sync client for the publisher's side."""

    def __init__(self, loop, directory):
        from mtopt.model_registry import ModelRegistryConfig
        from mtopt.model_registry.client import RegistryClient

        self.loop = loop
        self.config = ModelRegistryConfig(port=0, host="127.0.0.1", metrics_port=0, backend="local", directory=directory,
                                          fsync=False, grace_s=1.0, poll_s=0.1, io_workers=4, chunk_bytes=4096)
        self.server = None
        self.start()
        self.client = RegistryClient(self.address, timeout_s=20)
        self._step = 0

    def start(self) -> None:
        import dataclasses

        from mtopt.model_registry import start_model_registry

        self.server = self.loop.run(start_model_registry(self.config, readiness_interval_s=0.2))
        self.config = dataclasses.replace(self.config, port=self.server.port)  # the same port after a restart
        self.loop.run(self.server.service.wait_until_ready(30))

    def stop(self) -> None:
        self.loop.run(self.server.stop(0.5))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def publish(self, artifacts: dict[str, bytes], aliases=("stable", "latest"), tasks=None) -> int:
        """A new q_function version (trained with ``tasks``, default the built-in catalogue)."""
        self._step += 100
        version = self.client.publish(MODEL, self._step, artifacts, aliases=list(aliases),
                                      tasks=list(CATALOGUE.tasks) if tasks is None else tasks)
        return int(version.version)

    def pin(self, robot_id: str, version: int) -> None:
        self.client.pin(MODEL, robot_id, version, reason="test")

    def unpin(self, robot_id: str) -> None:
        self.client.unpin(MODEL, robot_id)

    def close(self) -> None:
        self.client.close()
        self.loop.run(self.server.stop(0.5))


# -- faults on the robot's side of the channel -------------------------------------------------
class _Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class _CutStream:
    """A server stream that delivers its first message, then breaks like a dropped connection."""

    def __init__(self, call):
        self._call, self._sent = call, False

    def __iter__(self):
        return self

    def __next__(self):
        if not self._sent:
            self._sent = True
            return next(self._call)
        self._call.cancel()
        raise _Failure(grpc.StatusCode.UNAVAILABLE, "connection dropped (injected by the test)")

    def cancel(self):
        self._call.cancel()


class _FailedStream:
    def __init__(self, code: grpc.StatusCode, details: str):
        self._error = _Failure(code, details)

    def __iter__(self):
        return self

    def __next__(self):
        raise self._error

    def cancel(self):
        pass


class FaultInjector(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Counts calls by method and injects faults: use with ``grpc.intercept_channel``."""

    def __init__(self):
        self.calls: collections.Counter = collections.Counter()
        self.cut_downloads = 0
        """Cut this many GetArtifact streams after their first chunk."""
        self.unimplemented: set[str] = set()
        """Methods answered with UNIMPLEMENTED (as by an older server)."""

    def intercept_unary_unary(self, continuation, details, request):
        self.calls[details.method.rsplit("/", 1)[-1]] += 1
        return continuation(details, request)

    def intercept_unary_stream(self, continuation, details, request):
        name = details.method.rsplit("/", 1)[-1]
        self.calls[name] += 1
        if name in self.unimplemented:
            return _FailedStream(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented (injected by the test)")
        call = continuation(details, request)
        if name == "GetArtifact" and self.cut_downloads > 0:
            self.cut_downloads -= 1
            return _CutStream(call)
        return call
