"""The streams an MQTT query server answers for: one fixed stream, or a directory that changes at run time.

Topics (``<p>`` = ``MqttConfig.topic_prefix``):

- one stream (``serve-mqtt``): ``<p>/<stream_id>/query`` and the retained ``<p>/<stream_id>/status``,
  exactly as before; the last will marks that status ``offline``.
- many streams (``omnizip serve``): the server subscribes ``<p>/+/query`` and routes each question by
  its topic's stream id (an id it does not serve is answered ``unknown_stream``); each stream has its
  retained ``<p>/<id>/status`` (same JSON as one stream's). The server itself is the reserved id
  ``server``: its retained ``<p>/server/status`` carries the last will (``offline`` when the
  connection dies; per-stream statuses cannot each have a will), ``<p>/server/streams`` takes the
  control requests (see :mod:`~omnizip_stream.query.control`) and ``<p>/server/streams/list`` is the
  retained list of streams, republished on every change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from omnizip_stream.credentials import redact_url
from omnizip_stream.query.base import QueryService

logger = logging.getLogger(__name__)

SERVER_ID = "server"  # the reserved topic level of the server's own topics (never a stream id)


@runtime_checkable
class StreamDirectory(Protocol):
    """What the MQTT server needs from a set of streams (``StreamServer`` is one).

    ``ids()`` lists the streams served now; ``session(id)`` is that stream's question answerer
    (``KeyError`` for an id not served).
    """

    def ids(self) -> list[str]:
        """Ids of the streams served now, in a stable order."""
        ...

    def session(self, stream_id: str) -> QueryService:
        """The stream's session. Raises KeyError for an unknown id."""
        ...


class StreamControl(StreamDirectory, Protocol):
    """A directory whose streams can be added and removed at run time (the ``server/streams`` ops)."""

    async def add(self, spec: Any) -> Any:
        """Start a stream. Raises ValueError (with a message for the requester) when it is refused."""
        ...

    async def remove(self, stream_id: str) -> None:
        """Stop a stream and free what it holds. Raises KeyError for an unknown id."""
        ...


class SingleStream:
    """The one-stream directory: ``service`` answers for ``stream_id`` (``serve-mqtt``, ``stream``)."""

    def __init__(self, stream_id: str, service: QueryService) -> None:
        self.stream_id = stream_id
        self.service = service

    def ids(self) -> list[str]:
        """``[stream_id]``."""
        return [self.stream_id]

    def session(self, stream_id: str) -> QueryService:
        """The service (the one-stream server ignores the topic: it subscribes to one stream only)."""
        return self.service


def lookup(directory: StreamDirectory, stream_id: str) -> QueryService | None:
    """``directory.session(stream_id)``, or None when the stream is not served."""
    if stream_id == SERVER_ID and not isinstance(directory, SingleStream):
        return None  # the server's own topics: a stream of that id is not served over MQTT
    try:
        return directory.session(stream_id)
    except (KeyError, LookupError):
        return None


def stream_of_topic(topic: str, prefix: str) -> str | None:
    """The stream id of a ``<prefix>/<id>/query`` topic, or None for any other topic."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == prefix and parts[2] == "query" and parts[1]:
        return parts[1]
    return None


def on_change(directory: Any, callback: Callable[[], None]) -> bool:
    """Register ``callback`` with the directory's ``on_change`` hooks when it has them; True if it did.

    Accepts a list of callbacks (``directory.on_change.append``) or a method (``on_change(callback)``).
    """
    hooks = getattr(directory, "on_change", None)
    if hooks is None:
        return False
    if isinstance(hooks, list):
        hooks.append(lambda *args, **kwargs: callback())
        return True
    if callable(hooks):
        hooks(lambda *args, **kwargs: callback())
        return True
    return False


def describe_memory(directory: Any) -> dict[str, Any] | None:
    """The directory's KV memory budget, or None where it reports none (or the report fails).

    ``directory.memory()``: ``budget_mb`` (None: unbounded), ``reserved_mb``, ``free_mb`` and each
    stream's reservation in MiB.
    """
    memory = getattr(directory, "memory", None)
    if not callable(memory):
        return None
    try:
        report = memory()
    except Exception:  # the list must not fail because of the budget's report
        logger.exception("reporting the memory budget failed")
        return None
    return dict(report) if isinstance(report, Mapping) else None


def describe_streams(directory: Any) -> list[dict[str, Any]]:
    """The published stream list: ``[{"id", "state", "source"}]`` with every source URL redacted.

    Uses ``directory.describe()`` when there is one (a mapping id -> details, or a list of
    details with ``id``); a stream it does not describe is ``running`` with an unknown source.
    """
    details: dict[str, Mapping[str, Any]] = {}
    describe = getattr(directory, "describe", None)
    if callable(describe):
        try:
            described = describe()
        except Exception:  # the list must not fail because of one stream's details
            logger.exception("describing the streams failed")
            described = None
        items = described.get("streams", described) if isinstance(described, Mapping) else described
        if isinstance(items, Mapping):
            details = {str(k): v for k, v in items.items() if isinstance(v, Mapping)}
        elif isinstance(items, list):
            details = {str(d["id"]): d for d in items if isinstance(d, Mapping) and "id" in d}
    out = []
    for stream_id in directory.ids():
        item = details.get(stream_id, {})
        source = item.get("source")
        out.append({"id": stream_id, "state": str(item.get("state", "running")),
                    "source": redact_url(str(source)) if source is not None else None})
    return out
