"""Where replies may go: MQTT topic-name rules, the confinement of reply routes, and route salvage.

A reply route comes from the requester (MQTT 5 ResponseTopic or the 3.1.1 payload's ``reply_to``), so
it is untrusted input that the server will *publish* to. Two things must hold before anything is
queued for it:

1. It is a topic name the broker accepts. A broker drops the whole connection on a PUBLISH with a
   malformed topic (mosquitto does for control characters and non-characters), and a string Python
   cannot encode (a lone surrogate) breaks the publish itself; either would silence the service.
2. It is confined: never a ``$`` topic (broker internals), never a topic of the service's own
   namespace ``<topic_prefix>/...`` (questions, status, alerts, watch of any stream) except this
   stream's reply area ``<topic_prefix>/<stream_id>/reply/...``, and, when ``reply_prefix`` is
   configured, only under it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MQTT_MAX_TOPIC_BYTES = 65535  # the protocol's limit (two-byte length prefix)
DEFAULT_MAX_REPLY_TOPIC_BYTES = 512
SALVAGE_SCAN_BYTES = 4 * 1024 * 1024  # how much of an invalid or oversized payload is scanned for reply_to


def topic_name_problem(topic: Any, max_bytes: int = MQTT_MAX_TOPIC_BYTES) -> str | None:
    """Why ``topic`` is not a publishable MQTT topic name, or None if it is.

    Rules (MQTT 3.1.1 / 5 §1.5.4 and §4.7, as mosquitto enforces them): a non-empty, well-formed
    UTF-8 string (no lone surrogates) of at most ``max_bytes`` bytes, without U+0000-U+001F,
    U+007F-U+009F, non-characters (U+FDD0-U+FDEF, U+xFFFE, U+xFFFF) or the wildcards ``+`` ``#``.
    """
    if not isinstance(topic, str):
        return f"must be a topic string, not {type(topic).__name__}"
    if not topic:
        return "must be a non-empty topic string"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not well-formed UTF-8 (it contains a lone surrogate)"
    if size > max_bytes:
        return f"is {size} bytes, longer than the limit of {max_bytes}"
    for ch in topic:
        cp = ord(ch)
        if cp <= 0x1F or 0x7F <= cp <= 0x9F:
            return f"contains the control character U+{cp:04X}"
        if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
            return f"contains the non-character U+{cp:04X}"
        if ch in "+#":
            return f"contains the wildcard {ch!r} (wildcards are for subscriptions, not topic names)"
    return None


@dataclass(frozen=True)
class RoutePolicy:
    """The topics a server may publish replies to.

    Attributes:
        topic_prefix: first level of the service's topics (``omnizip``); nothing under it is a reply
            route except ``<topic_prefix>/<stream_id>/reply/...``.
        stream_id: the stream this server answers for ("" allows no reply area under the prefix).
        reply_prefix: when set, every reply topic must lie under it (``devices/`` or ``devices``:
            ``devices/<anything>``).
        max_topic_bytes: longest reply topic accepted (UTF-8 bytes, at most 65535).

    Raises:
        ValueError: ``reply_prefix`` is not a topic prefix replies could ever go to.
    """

    topic_prefix: str = "omnizip"
    stream_id: str = ""
    reply_prefix: str | None = None
    max_topic_bytes: int = DEFAULT_MAX_REPLY_TOPIC_BYTES

    def __post_init__(self) -> None:
        if (not isinstance(self.max_topic_bytes, int) or isinstance(self.max_topic_bytes, bool)
                or not 1 <= self.max_topic_bytes <= MQTT_MAX_TOPIC_BYTES):
            raise ValueError(f"max_reply_topic_bytes must be an integer in 1..{MQTT_MAX_TOPIC_BYTES}, "
                             f"not {self.max_topic_bytes!r}")
        if self.reply_prefix is not None:
            prefix = self.reply_prefix.rstrip("/") if isinstance(self.reply_prefix, str) else self.reply_prefix
            problem = topic_name_problem(prefix, self.max_topic_bytes) or self._confinement_problem(prefix + "/x")
            if problem is not None:
                raise ValueError(f"reply_prefix {self.reply_prefix!r} {problem}")

    @property
    def own_reply_area(self) -> str:
        """``<topic_prefix>/<stream_id>/reply/``: the only part of the service namespace replies may use."""
        return f"{self.topic_prefix}/{self.stream_id}/reply/"

    def problem(self, topic: Any) -> str | None:
        """Why replies may not go to ``topic``, or None if they may."""
        return topic_name_problem(topic, self.max_topic_bytes) or self._confinement_problem(topic)

    def _confinement_problem(self, topic: str) -> str | None:
        if topic.startswith("$"):
            return "starts with '$' (broker topics are not reply routes)"
        if topic == self.topic_prefix or topic.startswith(self.topic_prefix + "/"):
            area = self.own_reply_area
            if not (self.stream_id and topic.startswith(area) and len(topic) > len(area)):
                return (f"is inside the service's own namespace {self.topic_prefix}/ (replies may only use "
                        f"{area}<your id> there)")
        if self.reply_prefix is not None and not topic.startswith(self.reply_prefix.rstrip("/") + "/"):
            return f"is outside the allowed reply prefix {self.reply_prefix.rstrip('/')}/"
        return None


def salvage_fields(payload: bytes, keys: tuple[str, ...] = ("reply_to", "id"),
                   scan_bytes: int = SALVAGE_SCAN_BYTES) -> dict[str, Any]:
    """Top-level ``keys`` of a payload that is not a valid (or not a small enough) JSON object.

    Walks the members of the outer object in order, as a JSON parser would, and stops at the first
    thing that does not parse (the truncation, the bad byte, an unterminated string...). So only
    values that are themselves complete and sit *before* the damage are returned, and text that
    merely looks like ``"reply_to": ...`` inside another string is never mistaken for the field.
    Bytes that are not UTF-8 become lone surrogates, which no route check accepts.

    Args:
        payload: the raw request bytes.
        keys: member names to return.
        scan_bytes: at most this many leading bytes are examined (bounded work on huge payloads).

    Returns:
        ``{key: value}`` for the wanted keys found (first occurrence wins); empty if none.
    """
    text = payload[:scan_bytes].decode("utf-8", errors="surrogateescape")
    decoder = json.JSONDecoder(parse_constant=_no_constant)
    out: dict[str, Any] = {}
    n = len(text)

    def skip_ws(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    i = skip_ws(0)
    if i >= n or text[i] != "{":
        return out
    i += 1
    try:
        while True:
            i = skip_ws(i)
            if i >= n or text[i] != '"':
                return out
            key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
            i = skip_ws(i)
            if i >= n or text[i] != ":":
                return out
            value, i = decoder.raw_decode(text, skip_ws(i + 1))
            if key in keys and key not in out:
                out[key] = value
                if len(out) == len(keys):
                    return out
            i = skip_ws(i)
            if i >= n or text[i] != ",":
                return out
            i += 1
    except (ValueError, RecursionError):
        return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")
