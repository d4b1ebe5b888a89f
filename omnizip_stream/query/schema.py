"""JSON wire format of MQTT queries: request validation and the partial / final / status messages.

Request (UTF-8 JSON object on ``<prefix>/<stream_id>/query``)::

    {"question": str,              required, 1..max_question_chars after stripping
     "max_new_tokens": int,        optional, 1..max_new_tokens_limit
     "stream": bool,               optional, partial answers before the final one
     "id": str | int,              optional, echoed in every reply (3.1.1 correlation)
     "reply_to": str,              3.1.1 clients: topic for the replies (ignored when the
                                   MQTT 5 ResponseTopic property is set)
     "client_id": str}             optional, rate-limit identity (see ``client_key``)

Replies (JSON objects on the reply topic, CorrelationData echoed under MQTT 5)::

    {"type": "partial", "id": ..., "seq": 0, "delta": "text"}
    {"type": "final", "ok": true, "id": ..., "stream_id": ..., "answer": ..., "ttft_ms": ...,
     "total_ms": ..., "server_ms": ..., "window_range": [i, j] | null,
     "time_range_s": [t0, t1] | null, "tokens_generated": n, "max_new_tokens_used": n,
     "sink_window_range": [i, j] | null, "sink_time_range_s": [t0, t1] | null,
     "recent_window_range": [i, j] | null, "recent_time_range_s": [t0, t1] | null,
     "windows_cached": n, "windows_evicted": n,
     "note": str}                  note only when the request was adjusted (e.g. its budget capped)
    {"type": "final", "ok": false, "id": ..., "stream_id": ..., "error": {"code": ..., "message": ...}}
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from omnizip_stream.query.base import Answer
from omnizip_stream.query.routes import RoutePolicy, salvage_fields

REQUEST_FIELDS = frozenset({"question", "max_new_tokens", "stream", "id", "reply_to", "client_id"})
MAX_ID_CHARS = 128
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:@\-]{1,64}$")

ERROR_CODES = ("bad_request", "too_long", "busy", "rate_limited", "not_ready", "shutting_down", "internal",
               # many-stream servers: a stream id not served; the server/streams control requests
               "unknown_stream", "forbidden", "unauthorized", "conflict", "refused",
               # standing questions (omnizip_stream.watch): too many on a stream, a watch id not registered
               "too_many", "unknown_watch")


def unknown_fields(obj: Mapping[str, Any], allowed: Iterable[str]) -> str | None:
    """The one-line ``bad_request`` message for fields of ``obj`` not in ``allowed`` (the first five), or None."""
    unknown = sorted(set(obj) - set(allowed))
    if not unknown:
        return None
    return f"unknown field(s) {', '.join(map(repr, unknown[:5]))}; allowed: {', '.join(sorted(allowed))}"


class RequestError(Exception):
    """A request that is refused before it reaches the session (code as in ``QueryError``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Route:
    """Where the replies to one request go.

    Attributes:
        topic: reply topic (MQTT 5 ResponseTopic or the payload's ``reply_to``).
        correlation: MQTT 5 CorrelationData to echo, or None.
    """

    topic: str
    correlation: bytes | None = None


@dataclass(frozen=True)
class QueryRequest:
    """A validated question.

    Attributes:
        question: the stripped question text.
        max_new_tokens: generation budget, already bounded.
        stream: whether partial answers were asked for.
        request_id: the client's ``id`` (str or int), echoed back; None if not given.
        client_id: the client's declared identity, or None.
        note: what the server changed about the request (e.g. a ``max_new_tokens`` above the limit
            was capped), or None; sent back in the final reply.
    """

    question: str
    max_new_tokens: int
    stream: bool = False
    request_id: str | int | None = None
    client_id: str | None = None
    note: str | None = None


def check_reply_topic(topic: Any, routes: RoutePolicy) -> str:
    """Validate a reply topic (from the payload or the ResponseTopic property).

    Args:
        topic: candidate topic.
        routes: the topic-name rules and the confinement (see :class:`RoutePolicy`).

    Returns:
        The topic.

    Raises:
        RequestError: ``bad_request`` if it is not a topic name replies may be published to.
    """
    problem = routes.problem(topic)
    if problem is not None:
        raise RequestError("bad_request", f"reply topic {problem}")
    return topic


def decode_payload(payload: bytes) -> Any:
    """Decode a UTF-8 JSON payload.

    Raises:
        RequestError: ``bad_request`` for invalid UTF-8 or JSON (including NaN/Infinity).
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("bad_request", "payload is not UTF-8 text") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise RequestError("bad_request", f"payload is not valid JSON ({_short(exc)})") from None


def payload_route(obj: Any, routes: RoutePolicy) -> tuple[str | None, str | int | None]:
    """Best-effort ``(reply_to, id)`` from a decoded payload, for replying to an invalid request.

    Invalid values are dropped rather than raised, so the error about the rest of the request can
    still reach a 3.1.1 client whose ``reply_to`` is fine.
    """
    if not isinstance(obj, dict):
        return None, None
    reply_to = obj.get("reply_to")
    if reply_to is not None and routes.problem(reply_to) is not None:
        reply_to = None
    rid = obj.get("id")
    if not _valid_id(rid):
        rid = None
    return reply_to, rid


def salvage_route(payload: bytes, routes: RoutePolicy) -> tuple[str | None, str | int | None]:
    """``(reply_to, id)`` recovered from a payload that is not valid JSON or is too large to parse.

    Only members that come complete before the damage count (see
    :func:`~omnizip_stream.query.routes.salvage_fields`), and the route is checked like any other,
    so an error reply can reach a 3.1.1 client whose request was truncated or oversized.
    """
    return payload_route(salvage_fields(payload), routes)


def parse_request(
    obj: Any,
    *,
    max_question_chars: int,
    default_max_new_tokens: int,
    max_new_tokens_limit: int,
    routes: RoutePolicy | None = None,
) -> QueryRequest:
    """Validate a decoded request object.

    Args:
        obj: the decoded JSON value.
        max_question_chars: longer questions are refused with ``too_long``.
        default_max_new_tokens: budget when the request gives none.
        max_new_tokens_limit: largest budget; a request asking for more is served with this limit
            and told so (``note``), rather than refused.
        routes: where ``reply_to`` may point (default: :class:`RoutePolicy` defaults).

    Returns:
        The validated request (``reply_to`` is checked here but routed by the caller).

    Raises:
        RequestError: ``bad_request`` (wrong shape, type, range or unknown field) or ``too_long``.
    """
    if not isinstance(obj, dict):
        raise RequestError("bad_request", f"request must be a JSON object, not {_json_type(obj)}")
    if (unknown := unknown_fields(obj, REQUEST_FIELDS)) is not None:
        raise RequestError("bad_request", unknown)
    if "question" not in obj:
        raise RequestError("bad_request", "missing required field 'question'")
    question = obj["question"]
    if not isinstance(question, str):
        raise RequestError("bad_request", f"'question' must be a string, not {_json_type(question)}")
    if not _well_formed(question):
        raise RequestError("bad_request", "'question' is not well-formed Unicode (it contains a lone surrogate)")
    question = question.strip()
    if not question:
        raise RequestError("bad_request", "'question' is empty")
    if len(question) > max_question_chars:
        raise RequestError("too_long", f"question has {len(question)} characters, limit {max_question_chars}")
    max_new = obj.get("max_new_tokens", default_max_new_tokens)
    if not isinstance(max_new, int) or isinstance(max_new, bool):
        raise RequestError("bad_request", f"'max_new_tokens' must be an integer, not {_json_type(max_new)}")
    note = None
    if max_new < 1:
        raise RequestError("bad_request", f"'max_new_tokens' must be in 1..{max_new_tokens_limit}, not {max_new}")
    if max_new > max_new_tokens_limit:
        note = f"max_new_tokens {max_new} is above this server's limit; answered with {max_new_tokens_limit}"
        max_new = max_new_tokens_limit
    stream = obj.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("bad_request", f"'stream' must be true or false, not {_json_type(stream)}")
    rid = obj.get("id")
    if rid is not None and not _valid_id(rid):
        raise RequestError("bad_request", f"'id' must be a string of at most {MAX_ID_CHARS} characters or an integer")
    if "reply_to" in obj:
        check_reply_topic(obj["reply_to"], routes if routes is not None else RoutePolicy())
    client_id = obj.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or not _CLIENT_ID_RE.match(client_id)):
        raise RequestError("bad_request", "'client_id' must be 1-64 characters of letters, digits or '_.:@-'")
    return QueryRequest(question, max_new, stream, rid, client_id, note)


def client_key(client_id: str | None, route: Route | None) -> str | None:
    """Identity used for per-client rate limiting.

    The broker does not tell subscribers who published a message, so the identity comes from the
    message: the declared ``client_id`` if any, otherwise the reply topic. A device that cannot
    be trusted to keep either stable must be pinned by the broker ACL (e.g. allow it to read only
    ``omnizip/+/reply/%u/#``); the bounded queue (``busy``) protects the service in any case.
    """
    if client_id is not None:
        return f"id:{client_id}"
    if route is not None:
        return f"topic:{route.topic}"
    return None


def final_answer(stream_id: str, request_id: Any, answer: Answer, server_ms: float, *,
                 max_new_tokens_used: int | None = None, note: str | None = None) -> dict[str, Any]:
    """Build the ``type: final, ok: true`` reply for an answer.

    ``max_new_tokens_used`` (the budget the answer was generated with) and ``note`` (what the server
    changed about the request) are added when given.
    """
    reply: dict[str, Any] = {
        "type": "final",
        "ok": True,
        "id": request_id,
        "stream_id": stream_id,
        "answer": answer.text,
        "ttft_ms": _num(answer.ttft_ms),
        "total_ms": _num(answer.total_ms),
        "server_ms": round(server_ms, 3),
        "window_range": json_safe(answer.window_range),
        "time_range_s": json_safe(answer.time_range_s),
        "tokens_generated": answer.tokens_generated,
        # What the answer could see: the sink and the recent windows apart (evicted ones in between are gone).
        "sink_window_range": json_safe(answer.sink_window_range),
        "sink_time_range_s": json_safe(answer.sink_time_range_s),
        "recent_window_range": json_safe(answer.recent_window_range),
        "recent_time_range_s": json_safe(answer.recent_time_range_s),
        "windows_cached": answer.windows_cached,
        "windows_evicted": answer.windows_evicted,
    }
    if max_new_tokens_used is not None:
        reply["max_new_tokens_used"] = max_new_tokens_used
    if note is not None:
        reply["note"] = note
    return reply


def final_error(stream_id: str, request_id: Any, code: str, message: str) -> dict[str, Any]:
    """Build the ``type: final, ok: false`` reply for a refused or failed request."""
    return {
        "type": "final",
        "ok": False,
        "id": request_id,
        "stream_id": stream_id,
        "error": {"code": code, "message": message},
    }


def partial(request_id: Any, seq: int, delta: str) -> dict[str, Any]:
    """Build a ``type: partial`` reply carrying the next piece of a streamed answer."""
    return {"type": "partial", "id": request_id, "seq": seq, "delta": delta}


def encode(obj: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; values JSON cannot carry (numpy scalars, tuples ...) are converted."""
    return json.dumps(obj, separators=(",", ":"), default=_json_default, allow_nan=False).encode("utf-8")


def json_safe(value: Any) -> Any:
    """Turn ``value`` (e.g. a ``stats()`` dict) into plain JSON types; NaN/inf become None."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    return json_safe(_json_default(value))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return str(value)


def _num(x: float) -> float | None:
    return round(float(x), 3) if math.isfinite(x) else None


def _valid_id(rid: Any) -> bool:
    if isinstance(rid, bool):
        return False
    if isinstance(rid, int):
        return abs(rid) < 2**63
    return isinstance(rid, str) and 0 < len(rid) <= MAX_ID_CHARS and _well_formed(rid)


def _well_formed(text: str) -> bool:
    """False if ``text`` has a lone surrogate (JSON may escape one; UTF-8 cannot carry it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."
