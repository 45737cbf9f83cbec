"""Process lifecycle: waiting for SIGTERM/SIGINT inside asyncio and running a service's main.

Kubernetes sends SIGTERM and, after terminationGracePeriodSeconds, SIGKILL; a service must stop
accepting work, let in-flight calls finish within its grace period and flush, all before that.

Usage::

    def serve(config):
        run_service(lambda: _serve_async(config))     # blocks until SIGTERM/SIGINT
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Awaitable, Callable, Iterable

log = logging.getLogger(__name__)

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def wait_for_signal(signals: Iterable[signal.Signals] = DEFAULT_SIGNALS) -> signal.Signals:
    """Waits until one of ``signals`` arrives and returns it.

    Installs loop signal handlers for the wait and removes them after, so a second Ctrl-C
    after the first falls back to Python's default (KeyboardInterrupt) and can force an exit.
    Works only in the main thread; elsewhere (e.g. a test running a server in a thread) it
    waits forever, which is what a server stopped by stop() needs.
    """
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()
    installed = []
    for sig in signals:
        try:
            loop.add_signal_handler(sig, lambda s=sig: received.done() or received.set_result(s))
            installed.append(sig)
        except (ValueError, RuntimeError, NotImplementedError):
            # Not the main thread (or no signal support): nothing to install.
            pass
    try:
        return await received
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def run_service(main: Callable[[], Awaitable[None]]) -> None:
    """Runs an async service main to completion on a fresh event loop (the process entry point)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
