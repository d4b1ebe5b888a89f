"""The FastAPI app of ``omnizip serve --http``: the HTTP face of a :class:`StreamServer`.

``create_app(server, settings)`` builds it; :func:`omnizip_stream.http.runner.serve_http` runs it with
uvicorn next to the server's other transports. Routes (see README "## HTTP API"):

- ``GET /healthz``; ``GET /metrics`` (Prometheus text format)
- ``GET/POST /v1/streams``, ``GET/DELETE /v1/streams/{id}``, ``GET /v1/streams/{id}/events`` (SSE)
- ``POST /v1/chat/completions`` (OpenAI-compatible), ``GET /v1/models``

Adding routes or static files (the web page does)::

    app = create_app(server, settings)
    app.include_router(router)                           # API routes: put them under /v1/ (key-protected)
    app.mount("/static", StaticFiles(directory=folder))  # anything outside /v1/ and /metrics is public

or list a module in :data:`EXTENSIONS`: its ``install(app)`` runs in every app ``create_app`` builds
(so ``omnizip serve --http`` serves it). Route handlers reach the server as ``request.app.state.server``
(and ``.settings``, ``.metrics``); raise :class:`ApiError` for a JSON error.

Every error is ``{"error": {"code": ..., "message": ...}}`` (codes as MQTT's: ``bad_request``,
``unknown_stream``, ``too_long``, ``busy``, ``not_ready``, ``unauthorized``, ``not_found``,
``conflict``, ``internal`` ...); a failing request never stops the server.
"""

from __future__ import annotations

import hmac
import importlib
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omnizip_stream.http.settings import HttpSettings, is_loopback
from omnizip_stream.query.base import QueryError
from omnizip_stream.server.service import StreamServer

logger = logging.getLogger(__name__)

# Modules whose ``install(app: FastAPI) -> None`` adds routes/static files to every app (e.g. the web page).
EXTENSIONS: list[str] = ["omnizip_stream.web"]

# QueryError / RequestError codes -> HTTP status.
STATUS_OF_CODE = {"bad_request": 400, "too_long": 400, "unauthorized": 401, "forbidden": 403,
                  "unknown_stream": 404, "unknown_watch": 404, "not_found": 404, "method_not_allowed": 405,
                  "conflict": 409, "refused": 409, "too_many": 409,
                  "busy": 429, "rate_limited": 429, "internal": 500, "not_ready": 503, "shutting_down": 503}
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "too_long", 415: "bad_request", 429: "busy"}
PROTECTED_PREFIXES = ("/v1/", "/metrics")


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.status = status or STATUS_OF_CODE.get(code, 400)

    @classmethod
    def of(cls, exc: QueryError) -> ApiError:
        """The HTTP face of a :class:`QueryError` (or the MQTT ``RequestError``)."""
        return cls(exc.code, exc.message)


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON of every error."""
    return {"error": {"code": code, "message": message}}


def error_response(code: str, message: str, status: int | None = None, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    """A JSON error response."""
    return JSONResponse(error_body(code, message), status_code=status or STATUS_OF_CODE.get(code, 400),
                        headers=headers)


async def read_json(request: Request) -> Any:
    """The request's JSON body (``Content-Type: application/json``; size-limited by the guard).

    Raises:
        ApiError: bad_request (wrong content type, malformed JSON), too_long (body over the limit).
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError("bad_request", f"Content-Type must be application/json, got {ctype or 'none'!r}", 415)
    body = await request.body()
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError("bad_request", f"malformed JSON body: {' '.join(str(exc).split())}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def create_app(server: StreamServer, settings: HttpSettings, *, extensions: list[str] | None = None) -> FastAPI:
    """The HTTP API of ``server``.

    Args:
        server: a started :class:`StreamServer` (routes read it at request time).
        settings: address, API key, body limit.
        extensions: module names whose ``install(app)`` is called (default :data:`EXTENSIONS`).
    """
    from omnizip_stream.http import chat, metrics, streams

    app = FastAPI(title="OmniZip-Stream", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.state.settings = settings
    app.state.metrics = metrics.ServerMetrics(server)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.code, exc.message, exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "internal" if exc.status_code >= 500 else "bad_request")
        message = str(exc.detail) if exc.status_code != 404 else f"no route {request.method} {request.url.path}"
        return error_response(code, message, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response("bad_request", "; ".join(str(e.get("msg")) for e in exc.errors()) or "invalid request")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        logger.error("HTTP %s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc,
                     exc_info=exc)
        return error_response("internal", f"{type(exc).__name__}: the request failed; the server goes on", 500)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        states = [info["state"] for info in server.describe()]
        return {"status": "ok" if server.worker.running else "stopping", "model": server.config.defaults.model,
                "streams": len(states), "running": states.count("running")}

    app.include_router(streams.router)
    app.include_router(chat.router)
    app.include_router(metrics.router)
    from omnizip_stream.http import watches  # standing questions (omnizip_stream.watch)

    app.include_router(watches.router)
    for name in EXTENSIONS if extensions is None else extensions:
        importlib.import_module(name).install(app)
    # Outermost: host check, API key, body size (before any route runs).
    app.add_middleware(Guard, settings=settings)
    return app


class Guard:
    """ASGI middleware: Host check (no key: loopback names only), Bearer key, request body size limit."""

    def __init__(self, app: ASGIApp, settings: HttpSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self._refusal(scope)
        if refused is not None:
            await refused(scope, receive, send)
            return
        limit = self.settings.max_body_bytes
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError("too_long", f"request body over the limit of {limit} bytes", 413)
            return message

        await self.app(scope, limited_receive, send)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        key = self.settings.api_key
        if key is None and not _loopback_host_header(headers.get("host", "")):
            # No key means "this machine only": a page elsewhere must not reach it by DNS rebinding.
            return error_response("forbidden", "this server answers only requests addressed to localhost", 403)
        if key is not None and path.startswith(PROTECTED_PREFIXES):
            auth = headers.get("authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
                why = "missing" if not auth else "wrong"
                return error_response("unauthorized", f"{why} API key (send 'Authorization: Bearer KEY')", 401,
                                      headers={"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.settings.max_body_bytes:
            return error_response("too_long", f"request body of {length} bytes over the limit of "
                                              f"{self.settings.max_body_bytes} bytes", 413)
        return None


def _loopback_host_header(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if host.startswith("["):
        name = host[1:host.find("]")]
    return bool(name) and is_loopback(name)


__all__ = ["EXTENSIONS", "PROTECTED_PREFIXES", "ApiError", "create_app", "error_body", "error_response", "read_json"]
