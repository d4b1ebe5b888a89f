"""Adding and removing streams at run time over MQTT: the ``<prefix>/server/streams`` requests.

Request (JSON on ``<prefix>/server/streams``; replies routed like questions: the MQTT 5
ResponseTopic with its CorrelationData echoed, or for 3.1.1 the payload's ``reply_to`` and ``id``)::

    {"op": "add", "token": "...", "stream": {"id": "door", "source": "rtsp://...", "rho_video": 0.7}}
    {"op": "remove", "token": "...", "stream_id": "door"}
    {"op": "list", "token": "..."}
    (+ "id", "reply_to", "client_id" as in a question)

``stream`` has the shape of one item of the server config's ``streams:`` list (``id``, ``source``,
per-stream ``StreamConfig`` overrides). Replies::

    {"type": "final", "ok": true, "id": ..., "op": "add", "stream_id": "door",
     "streams": [{"id": "door", "state": "running", "source": "rtsp://***@cam/"}, ...]}
    {"type": "final", "ok": false, "id": ..., "stream_id": "server", "op": ..., "error": {"code", "message"}}

Error codes: ``forbidden`` (the server has no ``admin_token``: control is off), ``unauthorized``
(missing or wrong ``token``; compared in constant time, counted, never logged), ``bad_request``
(not a JSON object, unknown field or op, a bad stream id or spec), ``conflict`` (the id is already
served), ``unknown_stream`` (remove of an id not served), ``refused`` (the server refused the stream,
e.g. it does not fit the memory budget: its message says why), ``rate_limited`` / ``busy`` as for
questions, ``internal``. Requests are rate-limited like questions, and run one at a time.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from omnizip_stream.credentials import redact_url
from omnizip_stream.query.outbox import OutMessage
from omnizip_stream.query.schema import RequestError, Route, encode, final_error, unknown_fields
from omnizip_stream.query.streams import SERVER_ID, StreamControl, describe_memory, describe_streams

logger = logging.getLogger(__name__)

CONTROL_FIELDS = frozenset({"op", "token", "stream", "stream_id", "id", "reply_to", "client_id"})
OPS = ("add", "remove", "list")
_STREAM_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")  # one topic level, as MqttConfig.stream_id
MAX_PENDING_OPS = 16  # control requests waiting for the one running (beyond: busy)


class ControlError(RequestError):
    """A control request refused with ``code`` (see the module docstring)."""


def check_stream_id(stream_id: Any) -> str:
    """Validate a stream id for a many-stream server (one topic level, not the reserved ``server``).

    Raises:
        ControlError: ``bad_request`` with the rule.
    """
    if not isinstance(stream_id, str) or not _STREAM_ID_RE.match(stream_id):
        raise ControlError("bad_request", "stream id must be 1-128 characters of letters, digits, '_', '.' or '-'")
    if stream_id == SERVER_ID:
        raise ControlError("bad_request", f"stream id {SERVER_ID!r} is reserved for the server's own topics")
    return stream_id


class ControlDesk:
    """Runs the ``server/streams`` requests a :class:`~omnizip_stream.query.jobs.QueryDesk` hands over.

    Args:
        desk: the query desk (its ``reject`` for error replies, its ``outbox`` for the others).
        streams: the streams to add to and remove from.
        admin_token: the secret a request must carry; None disables control (``forbidden``).
        make_spec: turns a request's ``stream`` mapping into what ``streams.add`` takes (the server
            config's ``stream_spec_from_mapping`` with its defaults); raises ValueError for a bad one.
        changed: called after every successful add or remove (republishes the list and statuses).
        before_add: awaited with the stream id before adding; raises :class:`ControlError` to refuse
            (e.g. another live server already answers that id on the broker).
    """

    def __init__(self, desk: Any, streams: StreamControl, *, admin_token: str | None,
                 make_spec: Callable[[Mapping[str, Any]], Any] = dict,
                 changed: Callable[[], None] = lambda: None,
                 before_add: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.desk = desk
        self.streams = streams
        self._token = admin_token.encode("utf-8") if admin_token else None
        self.make_spec = make_spec
        self.changed = changed
        self.before_add = before_add
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ intake (synchronous)
    def handle(self, obj: Any, route: Route | None, request_id: Any, routes: Any = None) -> None:
        """Answer one decoded control request (already rate-limited); never raises."""
        op = obj.get("op") if isinstance(obj, dict) else None
        try:
            self._authenticate(obj)
            if route is None:
                raise ControlError("bad_request", "no reply route (no MQTT 5 ResponseTopic, no 'reply_to')")
            if (unknown := unknown_fields(obj, CONTROL_FIELDS)) is not None:
                raise ControlError("bad_request", unknown)
            if op not in OPS:
                raise ControlError("bad_request", f"'op' must be one of {', '.join(OPS)}")
            if op == "list":
                self._reply(route, request_id, "list", None)
                return
            if len(self._tasks) >= MAX_PENDING_OPS:
                raise ControlError("busy", f"{len(self._tasks)} control requests waiting; try again later")
            work = self._add(obj, route, request_id) if op == "add" else self._remove(obj, route, request_id)
        except ControlError as exc:
            self._refuse(route, request_id, op, exc)
            return
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _authenticate(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            raise ControlError("bad_request", "request must be a JSON object")
        if self._token is None:
            raise ControlError("forbidden", "stream control is disabled on this server (no admin_token configured)")
        token = obj.get("token")
        given = token.encode("utf-8", "surrogatepass") if isinstance(token, str) else b""
        if not hmac.compare_digest(given, self._token):
            raise ControlError("unauthorized", "missing or wrong 'token'")

    # ------------------------------------------------------------------ operations (one at a time)
    async def _add(self, obj: dict[str, Any], route: Route, request_id: Any) -> None:
        item = obj.get("stream")
        try:
            if not isinstance(item, dict):
                raise ControlError("bad_request", "'stream' must be an object {id, source, <stream settings>}")
            stream_id = check_stream_id(item.get("id"))
            if not isinstance(item.get("source"), str) or not item["source"].strip():
                raise ControlError("bad_request", "'stream.source' must be a non-empty string")
            try:
                spec = self.make_spec(dict(item))
            except (ValueError, TypeError) as exc:
                raise ControlError("bad_request", f"stream {stream_id!r}: {exc}") from None
            async with self._lock:
                if stream_id in self.streams.ids():
                    raise ControlError("conflict", f"stream {stream_id!r} is already served; remove it first")
                if self.before_add is not None:
                    await self.before_add(stream_id)
                try:
                    await self.streams.add(spec)
                except (ValueError, RuntimeError) as exc:
                    # admission refused (a ValueError naming what fits), caps that leave no room for a
                    # question (CacheFullError), a server closing: the server's own words
                    raise ControlError("refused", f"stream {stream_id!r} not added: {exc}") from None
            logger.info("stream %r added over MQTT (source %s)", stream_id, redact_url(item["source"]))
            self.changed()
            self._reply(route, request_id, "add", stream_id)
        except ControlError as exc:
            self._refuse(route, request_id, "add", exc)
        except asyncio.CancelledError:
            self._refuse(route, request_id, "add", ControlError("shutting_down", "the server is shutting down"))
            raise
        except Exception as exc:  # a bug in one request must never end the service
            logger.exception("adding a stream over MQTT failed")
            self._refuse(route, request_id, "add", ControlError("internal", f"internal error ({type(exc).__name__})"))

    async def _remove(self, obj: dict[str, Any], route: Route, request_id: Any) -> None:
        try:
            stream_id = check_stream_id(obj.get("stream_id"))
            async with self._lock:
                if stream_id not in self.streams.ids():
                    raise ControlError("unknown_stream", f"this server has no stream {stream_id!r}")
                try:
                    await self.streams.remove(stream_id)
                except KeyError:
                    raise ControlError("unknown_stream", f"this server has no stream {stream_id!r}") from None
            logger.info("stream %r removed over MQTT", stream_id)
            self.changed()
            self._reply(route, request_id, "remove", stream_id)
        except ControlError as exc:
            self._refuse(route, request_id, "remove", exc)
        except asyncio.CancelledError:
            self._refuse(route, request_id, "remove", ControlError("shutting_down", "the server is shutting down"))
            raise
        except Exception as exc:
            logger.exception("removing a stream over MQTT failed")
            self._refuse(route, request_id, "remove",
                         ControlError("internal", f"internal error ({type(exc).__name__})"))

    async def stop(self) -> None:
        """Cancel the requests not finished (each is answered ``shutting_down``)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ replies
    def _reply(self, route: Route, request_id: Any, op: str, stream_id: str | None) -> None:
        reply: dict[str, Any] = {"type": "final", "ok": True, "id": request_id, "op": op}
        if stream_id is not None:
            reply["stream_id"] = stream_id
        reply["streams"] = describe_streams(self.streams)
        if (memory := describe_memory(self.streams)) is not None:
            reply["memory"] = memory  # after an add or remove: what is reserved and what is still free
        self.desk.counters["control_ok"] += 1
        self.desk.outbox.put(OutMessage(route.topic, encode(reply), route.correlation))

    def _refuse(self, route: Route | None, request_id: Any, op: Any, exc: ControlError) -> None:
        if route is None:
            self.desk.reject(None, request_id, exc.code, exc.message)
            return
        reply = final_error(SERVER_ID, request_id, exc.code, exc.message)
        if isinstance(op, str) and op in OPS:
            reply["op"] = op
        self.desk.errors[exc.code] += 1
        self.desk.counters["rejected"] += 1
        self.desk.outbox.put(OutMessage(route.topic, encode(reply), route.correlation))
