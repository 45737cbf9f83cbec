"""Listening ports handed to child processes (`mtopt up`, test fixtures, benchmarks).

A port taken from ``bind(0)`` and closed again comes from the kernel's ephemeral range, the same
range every outgoing TCP connection's local port is drawn from. Between choosing it and the child
binding it, a gRPC client, a MinIO request or a Prometheus scrape can take it, and the child then
dies with EADDRINUSE (seen in CI: a labeller's metrics port, after ~100 s of traffic). Ports below
the ephemeral range are never given out implicitly, so `unused_port()` picks from there and checks
that the port can be bound on every interface.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 20000
"""The lowest port handed out: above the registered ports most daemons listen on."""
_MIN_POOL = 2000
"""Below this many non-ephemeral ports, fall back to the kernel's choice."""

_lock = threading.Lock()
_handed_out: set[int] = set()
_rng = random.Random()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for implicitly bound local ports (Linux default when unknown)."""
    try:
        low, high = (int(x) for x in _RANGE_FILE.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    for host in ("0.0.0.0", "127.0.0.1"):
        try:
            with socket.socket() as s:
                s.bind((host, port))
        except OSError:
            return False
    return True


def _kernel_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unused_port() -> int:
    """A TCP port nothing listens on, outside the ephemeral range where possible, and never the
    same port twice in one process (so several ports chosen before any is bound are distinct)."""
    low, _ = ephemeral_range()
    with _lock:
        if low - _LOWEST >= _MIN_POOL:
            for _ in range(200):
                port = _rng.randrange(_LOWEST, low)
                if port not in _handed_out and _bindable(port):
                    _handed_out.add(port)
                    return port
        for _ in range(50):
            port = _kernel_port()
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise OSError("no unused TCP port found")
