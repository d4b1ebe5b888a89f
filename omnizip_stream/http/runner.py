"""Serve the HTTP API with uvicorn inside the running event loop, next to the server's other transports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, replace
from typing import Any

import uvicorn

from omnizip_stream.http.settings import HttpSettings
from omnizip_stream.server.service import StreamServer

logger = logging.getLogger(__name__)


class HttpBindError(ValueError):
    """The HTTP address cannot be served (port in use, unknown host, no API key off loopback)."""


@dataclass(frozen=True)
class HttpService:
    """A running HTTP API: its URL (the actual port when 0 was asked), settings and app."""

    url: str
    settings: HttpSettings
    app: Any


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the run's SIGTERM/Ctrl-C handling stays in charge."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind_socket(settings: HttpSettings) -> socket.socket:
    """A listening TCP socket on ``settings.host:port``.

    Raises:
        HttpBindError: one line (no API key off loopback, address in use, unknown host).
    """
    try:
        settings.check_bind()
    except ValueError as exc:
        raise HttpBindError(str(exc)) from None
    try:
        infos = socket.getaddrinfo(settings.host.strip("[]"), settings.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise HttpBindError(f"--http {settings.host}: unknown host ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise HttpBindError(f"cannot serve HTTP on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def serve_http(server: StreamServer, settings: HttpSettings, *, app: Any = None,
                     sock: socket.socket | None = None, shutdown_timeout_s: float = 2.0
                     ) -> AsyncIterator[HttpService]:
    """Serve ``create_app(server, settings)`` (or ``app``) until the context exits.

    Logs one line with the URL. Open event streams are closed after ``shutdown_timeout_s``.

    Args:
        server: the (started, or starting) stream server the routes read.
        settings: address, API key, limits.
        app: the ASGI app to serve (default ``create_app(server, settings)``).
        sock: a socket from :func:`bind_socket` (default: bound here); closed on exit.
        shutdown_timeout_s: how long open requests (event streams) may take to end on exit.

    Raises:
        HttpBindError: non-loopback without an API key, port in use, unknown host.
    """
    sock = sock if sock is not None else bind_socket(settings)
    settings = replace(settings, port=sock.getsockname()[1])
    if app is None:
        from omnizip_stream.http.app import create_app

        app = create_app(server, settings)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws="none",
                            timeout_graceful_shutdown=max(1, round(shutdown_timeout_s)))
    uv = _Server(config)
    task = asyncio.create_task(uv.serve(sockets=[sock]), name="http")
    try:
        while not uv.started:
            if task.done():
                task.result()  # raises what stopped it
                raise HttpBindError(f"cannot serve HTTP on {settings.url}")
            await asyncio.sleep(0.01)
        logger.info("HTTP API on %s", settings.url)
        yield HttpService(settings.url, settings, app)
    finally:
        web = getattr(getattr(app, "state", None), "web", None)  # the web page's WebRTC peers (omnizip_stream.web)
        if web is not None:
            await web.aclose()  # hang up on the browsers: their streams end
        uv.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), shutdown_timeout_s + 3.0)
        except (asyncio.TimeoutError, Exception):
            uv.force_exit = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            sock.close()


__all__ = ["HttpBindError", "HttpService", "bind_socket", "serve_http"]
