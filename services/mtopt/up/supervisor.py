"""Starts the processes of a local run in order, watches them, and stops them gracefully.

Each process gets its own log file (``<data_dir>/logs/<name>.log``). A service counts as started
once its gRPC health endpoint answers (NOT_SERVING is fine: log_replay, for example, waits for a
success-detector version that needs episodes from robots started after it); a robot once its
metrics port answers. Stopping sends SIGTERM to everything in reverse start order (robots first,
so their last episodes reach the store), waits `grace_s`, then kills what is left.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mtopt.up.topology import ProcessSpec

log = logging.getLogger(__name__)


class ProcessFailed(RuntimeError):
    """A process exited when it should not have; the message holds the tail of its log."""


@dataclasses.dataclass
class Running:
    spec: ProcessSpec
    proc: subprocess.Popen
    log_path: Path

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def health_status(address: str, service: str = "", timeout_s: float = 1.0) -> str | None:
    """SERVING / NOT_SERVING / ... from grpc.health.v1, or None if nothing answers."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _http_ok(port: int, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            return r.status == 200
    except OSError:
        return False


class Supervisor:
    """Runs a list of ProcessSpecs.

    Usage::

        with Supervisor(specs, log_dir) as sup:
            sup.start_all()            # in order, each waited for
            while ...: sup.check()     # raises ProcessFailed if something died
        # leaving the block stops everything (SIGTERM, grace, SIGKILL)
    """

    def __init__(self, specs: list[ProcessSpec], log_dir: Path, *, grace_s: float = 10.0, start_timeout_s: float = 120.0):
        self.specs, self.log_dir, self.grace_s, self.start_timeout_s = specs, log_dir, grace_s, start_timeout_s
        self.running: dict[str, Running] = {}
        self.exit_codes: dict[str, int | None] = {}

    def __enter__(self) -> "Supervisor":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    def start_all(self, on_started=None) -> None:
        for spec in self.specs:
            self.start(spec)
            self.wait_started(spec)
            if on_started is not None:
                on_started(spec)

    def start(self, spec: ProcessSpec) -> Running:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{spec.name}.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(list(spec.argv), env=os.environ | spec.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        running = Running(spec, proc, log_path)
        self.running[spec.name] = running
        return running

    def wait_started(self, spec: ProcessSpec) -> None:
        running = self.running[spec.name]
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if running.proc.poll() is not None and not (spec.exits and running.proc.returncode == 0):
                raise ProcessFailed(f"{spec.name} exited with {running.proc.returncode} while starting; "
                                    f"its log {running.log_path}:\n{running.tail()}")
            if spec.grpc_port is not None:
                if health_status(spec.address) is not None:
                    return
            elif _http_ok(spec.metrics_port) or spec.exits:
                return
            time.sleep(0.2)
        raise ProcessFailed(f"{spec.name} did not start within {self.start_timeout_s:.0f} s; its log {running.log_path}:\n{running.tail()}")

    def check(self) -> None:
        """Raises ProcessFailed if a process has exited that should still run."""
        for r in self.running.values():
            code = r.proc.poll()
            if code is not None and not (r.spec.exits and code == 0):
                raise ProcessFailed(f"{r.spec.name} exited with {code}; its log {r.log_path}:\n{r.tail()}")

    def exited_cleanly(self, name: str) -> bool:
        r = self.running.get(name)
        return r is not None and r.proc.poll() == 0

    def stop_roles(self, roles: tuple[str, ...]) -> None:
        """Stops the processes of these roles (SIGTERM together, grace, SIGKILL); the rest run on."""
        self._stop_group([r for r in self.running.values() if r.spec.role in roles])

    def stop_all(self) -> dict[str, int | None]:
        """SIGTERM in reverse start order (one wave per group), grace, then SIGKILL. Exit codes by name."""
        order = list(reversed(list(self.running.values())))
        groups: list[list[Running]] = []
        for r in order:  # robots together, then Bellman workers together, then each service
            if groups and groups[-1][0].spec.role == r.spec.role and r.spec.role in ("robot", "bellman"):
                groups[-1].append(r)
            else:
                groups.append([r])
        for group in groups:
            self._stop_group(group)
        return dict(self.exit_codes)

    def _stop_group(self, group: list[Running]) -> None:
        for r in group:
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + 5
        for r in group:
            try:
                r.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s of SIGTERM: killing it", r.spec.name, self.grace_s + 5)
                r.proc.kill()
                r.proc.wait()
            self.exit_codes[r.spec.name] = r.proc.returncode
            self.running.pop(r.spec.name, None)
