"""The metrics port: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz`` (readiness)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST

from smartico_stream.config import EXIT_CONFIG, StartupError
from smartico_stream.observability.health import Health
from smartico_stream.observability.metrics import Metrics


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the log; access logs are not wanted here."""


def make_app(metrics: Metrics, health: Health) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body = metrics.render()
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [body]
        if path in ("/healthz", "/readyz"):
            ok, reason = health.live() if path == "/healthz" else health.ready()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [reason.encode() + b"\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    return app


class MetricsServer:
    """Serves the app on a daemon thread; ``port`` 0 picks a free port (see ``.port``). A port that
    cannot be bound (in use, not permitted, unknown host) is a StartupError naming ``host:port``."""

    def __init__(self, metrics: Metrics, health: Health, host: str, port: int) -> None:
        try:
            self._server = make_server(
                host, port, make_app(metrics, health), server_class=_ThreadingServer, handler_class=_QuietHandler
            )
        except OSError as exc:
            reason = (exc.strerror or type(exc).__name__).lower()
            raise StartupError(f"cannot listen on {host}:{port}: {reason}", EXIT_CONFIG) from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
