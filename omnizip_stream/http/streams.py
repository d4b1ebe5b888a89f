"""``/v1/streams``: list, add, describe and remove streams; ``/v1/streams/{id}/events`` (SSE of status)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from omnizip_stream.http.app import ApiError, read_json
from omnizip_stream.kv import CacheFullError
from omnizip_stream.query.schema import json_safe
from omnizip_stream.server.config import MAX_STREAMS, stream_spec_from_mapping
from omnizip_stream.server.service import StreamServer

router = APIRouter()
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE_S = 15.0  # an idle event stream gets a comment line this often


def stream_info(server: StreamServer, stream_id: str) -> dict[str, Any]:
    """A stream's ``describe()`` entry plus its full ``stats()`` (JSON-safe).

    Raises:
        ApiError: unknown_stream.
    """
    for info in server.describe():
        if info["id"] == stream_id:
            return json_safe({**info, "stats": server.session(stream_id).stats()})
    raise unknown_stream(server, stream_id)


def unknown_stream(server: StreamServer, stream_id: Any) -> ApiError:
    """The error for a stream id that is not served (names the ones that are)."""
    ids = server.ids()
    shown = ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "")
    return ApiError("unknown_stream", f"no stream {str(stream_id)[:130]!r}; served: {shown or 'none'}")


@router.get("/v1/streams")
async def list_streams(request: Request) -> dict[str, Any]:
    """Every stream with its state and stats, and the shared memory budget (``memory``)."""
    server: StreamServer = request.app.state.server
    return {"object": "list", "data": [stream_info(server, sid) for sid in server.ids()], "memory": server.memory()}


@router.get("/v1/streams/{stream_id}")
async def get_stream(stream_id: str, request: Request) -> dict[str, Any]:
    """One stream's state and stats."""
    return stream_info(request.app.state.server, stream_id)


@router.post("/v1/streams", status_code=201)
async def add_stream(request: Request) -> JSONResponse:
    """Add a stream: ``{id, source, <StreamConfig overrides>, <source options>}`` (as a server file's entry)."""
    server: StreamServer = request.app.state.server
    body = await read_json(request)
    if isinstance(body, dict) and body.get("id") in server.ids():
        raise ApiError("conflict", f"stream {body['id']!r} is already being served")
    if len(server.ids()) >= MAX_STREAMS:
        raise ApiError("busy", f"{len(server.ids())} streams are served; at most {MAX_STREAMS}")
    try:
        spec = stream_spec_from_mapping(body, server.config.defaults, where="stream")
        await server.add(spec)
    except CacheFullError as exc:
        raise ApiError("busy", " ".join(str(exc).split())) from None
    except ValueError as exc:
        text = " ".join(str(exc).split())
        raise ApiError("conflict" if "already being served" in text else "bad_request", text) from None
    except RuntimeError as exc:
        raise ApiError("shutting_down", str(exc)) from None
    return JSONResponse(stream_info(server, spec.id), status_code=201)


@router.delete("/v1/streams/{stream_id}")
async def delete_stream(stream_id: str, request: Request) -> dict[str, Any]:
    """Stop a stream and free its memory."""
    server: StreamServer = request.app.state.server
    try:
        await server.remove(stream_id)
    except KeyError:
        raise unknown_stream(server, stream_id) from None
    return {"id": stream_id, "object": "stream", "deleted": True}


@router.get("/v1/streams/{stream_id}/events")
async def stream_events(stream_id: str, request: Request) -> StreamingResponse:
    """Server-sent events: ``status`` (when it changes), ``alert`` (each standing-question alert), ``removed``.

    ``alert`` carries the alert JSON published on MQTT; ``removed`` ends the stream of events.
    """
    server: StreamServer = request.app.state.server
    first = stream_info(server, stream_id)
    interval_s = request.app.state.settings.events_interval_s
    return StreamingResponse(_events(server, stream_id, first, interval_s), media_type="text/event-stream",
                             headers=SSE_HEADERS)


def sse(data: Any, event: str | None = None) -> str:
    """One server-sent event (``data`` as compact JSON, or a string as is)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), allow_nan=False)
    return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


async def _events(server: StreamServer, stream_id: str, first: dict[str, Any], interval_s: float
                  ) -> AsyncIterator[str]:
    changes: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=256)

    def on_change(event: str, info: dict[str, Any]) -> None:
        if info.get("id") == stream_id:
            with contextlib.suppress(asyncio.QueueFull):
                changes.put_nowait((event, info))

    def on_alert(alert: dict[str, Any]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            changes.put_nowait(("alert", alert))

    try:
        watches = getattr(server.session(stream_id), "watches", None)
    except KeyError:  # removed since the request was checked
        watches = None
    if watches is not None:
        watches.listeners.append(on_alert)
    server.on_change.append(on_change)
    try:
        last, quiet_s = first, 0.0
        yield sse(first, "status")
        while True:
            try:
                event, info = await asyncio.wait_for(changes.get(), interval_s)
            except asyncio.TimeoutError:
                event = "tick"
                quiet_s += interval_s
                if quiet_s >= KEEPALIVE_S:  # a comment line: proxies keep an idle stream open
                    quiet_s = 0.0
                    yield ": keepalive\n\n"
            if event == "removed":
                yield sse({"id": stream_id}, "removed")
                return
            if event == "alert":
                yield sse(json_safe(info), "alert")
                quiet_s = 0.0
                continue
            try:
                now = stream_info(server, stream_id)
            except ApiError:  # removed between the callback and now
                yield sse({"id": stream_id}, "removed")
                return
            if _changed(last, now):
                yield sse(now, "status")
                last, quiet_s = now, 0.0
    finally:
        with contextlib.suppress(ValueError):
            server.on_change.remove(on_change)
        if watches is not None:
            with contextlib.suppress(ValueError):
                watches.listeners.remove(on_alert)


def _changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether a status event is worth sending (anything but the live lag's drift)."""
    def strip(info: dict[str, Any]) -> dict[str, Any]:
        stats = {k: v for k, v in info.get("stats", {}).items() if k not in ("window_lag_s",)}
        return {**{k: v for k, v in info.items() if k not in ("window_lag_s", "stats")}, "stats": stats}
    return strip(before) != strip(after)
