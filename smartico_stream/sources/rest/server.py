"""uvicorn (httptools, on the service's own uvloop event loop) serving the API beside the batch loop.

The socket is bound here, not by uvicorn, so a port in use is a StartupError naming ``rest.port``
(uvicorn would log and exit the process); the service keeps its own signal handling (uvicorn's would
replace it and stop the batch loop without its final commit)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI

from smartico_stream.config import EXIT_CONFIG, StartupError
from smartico_stream.sources.rest.settings import RestSettings


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the service's SIGTERM/SIGINT handlers stay in charge (see the module docstring)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or type(exc).__name__).lower()
        raise StartupError(f"rest.port: cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


class ApiServer:
    """The API on ``settings.host:settings.port`` (HTTPS with ``tls_cert_file``/``tls_key_file``)."""

    def __init__(self, app: FastAPI, settings: RestSettings) -> None:
        for name in ("tls_cert_file", "tls_key_file"):
            path = getattr(settings, name)
            if path is not None and not path.is_file():
                raise StartupError(f"rest.{name}: no such file: {path}", EXIT_CONFIG)
        self._settings = settings
        self._config = uvicorn.Config(
            app, http="httptools", loop="none", lifespan="off", access_log=False, log_config=None,
            server_header=False, timeout_graceful_shutdown=5,
            ssl_certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
            ssl_keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
        )
        self._server = _Server(self._config)
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> None:
        sock = _bind(self._settings.host, self._settings.port)
        self.port = sock.getsockname()[1]
        try:
            self._config.load()  # the TLS files are read here: a bad one is the configuration's to fix
        except Exception as exc:  # noqa: BLE001 - ssl's errors name no setting; this names it
            sock.close()
            raise StartupError(f"rest.tls_cert_file: cannot load the certificate and key: {type(exc).__name__}",
                               EXIT_CONFIG) from None
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise StartupError(f"rest.port: the API did not start on {self._settings.host}:{self.port}")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await self._task
