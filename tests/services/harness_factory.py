"""`closing_factory`: the shape of the make_store/make_registry fixtures, shared by tests/services
and tests/robot_agent (which puts this directory on sys.path)."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator, TypeVar

H = TypeVar("H")


@contextlib.contextmanager
def closing_factory(make: Callable[..., H]) -> Iterator[Callable[..., H]]:
    """Yields a factory that calls ``make`` and remembers each harness; on exit closes them all,
    ignoring errors (a test may already have closed or broken one).

    Usage in a fixture::

        with closing_factory(lambda **kw: Harness(...)) as factory:
            yield factory
    """
    harnesses: list[H] = []

    def factory(*args, **kwargs) -> H:
        h = make(*args, **kwargs)
        harnesses.append(h)
        return h

    yield factory
    for h in harnesses:
        with contextlib.suppress(Exception):
            h.close()


class ServiceHarness:
    """Base of the service harnesses: a service started in the test loop thread (``self.loop``,
    a store_harness.LoopThread) from ``self.config``, restartable on the same port.

    A subclass sets ``loop`` and ``config`` and implements ``_start_server()`` (the coroutine of
    the service's ``start_<service>(config, ...)``)::

        class TrainerHarness(ServiceHarness):
            def __init__(self, loop, config):
                self.loop, self.config = loop, config
                self.start()

            def _start_server(self):
                return start_trainer(self.config, readiness_interval_s=0.2)
    """

    server = None
    ready_timeout_s: float = 60.0

    def _start_server(self):
        raise NotImplementedError

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.config.port}"

    def start(self, wait_ready: bool = True) -> None:
        self.server = self.loop.run(self._start_server())
        if self.config.port == 0:  # keep the port across restarts
            self.config = dataclasses.replace(self.config, port=self.server.port)
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout: float | None = None) -> None:
        timeout = self.ready_timeout_s if timeout is None else timeout
        self.loop.run(self.server.service.wait_until_ready(timeout), timeout=timeout + 10)

    def stop(self, grace_s: float | None = None) -> None:
        if self.server is not None:
            self.loop.run(self.server.stop(grace_s))

    def restart(self, grace_s: float | None = None, **overrides) -> None:
        self.stop(grace_s)
        self.config = dataclasses.replace(self.config, **overrides)
        self.start()

    def metric(self, name: str, **labels) -> float:
        return self.server.metrics.value(name, labels)
