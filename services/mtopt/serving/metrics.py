"""Prometheus metrics served over HTTP on their own port, one CollectorRegistry per service.

Each service creates its metrics on its own registry (never the process-global one), so several
services, or several instances of one service, can run inside one test process::

    registry = CollectorRegistry()
    stored = Counter("mtopt_episode_store_episodes_stored_total", "...", ["task"], registry=registry)
    metrics = MetricsServer(registry, port=9090)   # port 0 picks a free one
    metrics.start(); ...; metrics.stop()
"""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - no access log per scrape
        pass


class MetricsServer:
    """Serves ``/metrics`` of one registry on ``host:port`` from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "0.0.0.0"):
        self.registry = registry
        self._host, self._requested_port = host, port
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (after start(); resolves port 0)."""
        if self._httpd is None:
            raise RuntimeError("MetricsServer.port is only known after start()")
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        if self._httpd is not None:
            return
        server_class = _Server6 if ":" in self._host else _Server
        try:
            self._httpd = make_server(self._host, self._requested_port, make_wsgi_app(self.registry), server_class, _QuietHandler)
        except OSError as e:
            raise OSError(f"cannot serve metrics on {self._host}:{self._requested_port}: {e}; set another metrics port") from e
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="metrics-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stops serving and closes the socket. Idempotent."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd, self._thread = None, None
