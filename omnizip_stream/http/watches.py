"""``/v1/streams/{id}/watches`` (standing questions: list, add, remove) and ``/v1/streams/{id}/alerts?since=``.

The same registrations as the server file and MQTT (:func:`~omnizip_stream.watch.spec.watch_spec_from_mapping`,
one-line errors; the stream keeps going) and the stream's alert log (:class:`~omnizip_stream.watch.log.AlertLog`:
alerts with ``seq > since``, oldest first).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from omnizip_stream.http.app import STATUS_OF_CODE, ApiError, read_json
from omnizip_stream.http.streams import unknown_stream
from omnizip_stream.query.schema import json_safe
from omnizip_stream.watch.spec import WatchError, watch_spec_from_mapping

router = APIRouter()
MAX_ALERTS = 1000  # per response; page on with since=<last seq>


def _session(request: Request, stream_id: str) -> Any:
    server = request.app.state.server
    try:
        return server.session(stream_id)
    except KeyError:
        raise unknown_stream(server, stream_id) from None


def _error(exc: WatchError) -> ApiError:
    return ApiError(exc.code, exc.message, STATUS_OF_CODE.get(exc.code, 400))


@router.get("/v1/streams/{stream_id}/watches")
async def list_watches(stream_id: str, request: Request) -> dict[str, Any]:
    """The stream's standing questions with their state."""
    return {"object": "list", "data": json_safe(_session(request, stream_id).watches.list())}


@router.post("/v1/streams/{stream_id}/watches", status_code=201)
async def add_watch(stream_id: str, request: Request) -> JSONResponse:
    """Register ``{question, threshold, debounce, cooldown_s, every_windows, describe, id}``."""
    session = _session(request, stream_id)
    body = await read_json(request)
    engine = getattr(session, "engine", None)
    try:
        state = session.watches.add(watch_spec_from_mapping(body),
                                    check_question=engine.question_ids if engine is not None else None)
    except WatchError as exc:
        raise _error(exc) from None
    return JSONResponse(json_safe(state.describe()), status_code=201)


@router.delete("/v1/streams/{stream_id}/watches/{watch_id}")
async def delete_watch(stream_id: str, watch_id: str, request: Request) -> dict[str, Any]:
    """Unregister one standing question."""
    session = _session(request, stream_id)
    try:
        session.watches.remove(watch_id)
    except KeyError:
        raise ApiError("unknown_watch", f"stream {stream_id!r} has no watch {watch_id[:64]!r}", 404) from None
    return {"id": watch_id, "object": "watch", "deleted": True}


@router.get("/v1/streams/{stream_id}/alerts")
async def list_alerts(stream_id: str, request: Request, since: int = 0) -> dict[str, Any]:
    """Alerts of the stream's log with ``seq > since`` (at most :data:`MAX_ALERTS`), oldest first."""
    log = _session(request, stream_id).watches.log
    alerts = log.read(since)[:MAX_ALERTS] if log is not None else []
    return {"object": "list", "data": json_safe(alerts),
            "last_seq": alerts[-1]["seq"] if alerts else since}
