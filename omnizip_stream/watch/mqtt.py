"""Standing questions over MQTT: alerts out on ``<p>/<id>/alerts``, registrations on ``<p>/<id>/watch``.

:func:`enable_watches` plugs both into a :class:`~omnizip_stream.query.mqtt.MqttQueryServer` (one
stream or many): it subscribes the watch topic(s) and hands every alert of every served stream
(streams added at run time included) to the server's outbox.

**Alerts** are JSON (``stream_id``, ``watch_id``, ``question``, ``probability``, ``time_range_s``, ...;
see :mod:`omnizip_stream.watch.registry`) published with QoS ``config.qos`` (1), not retained, with
MQTT 5 user properties ``stream_id``, ``watch_id``, ``probability`` and ``seq``. They are in the
stream's JSONL log before they reach the outbox; the outbox outlives connections, so an alert made
while the broker is away is published after the reconnect. Across restarts too: a stream with a log
gets an :class:`~omnizip_stream.watch.delivery.AlertDelivery`, which records what the broker
acknowledged (the log's published marker) and, when the publisher starts for the stream, first
queues the logged alerts that were never acknowledged, oldest first (at least once).

**Registration** requests (the question wire format: MQTT 5 ResponseTopic + CorrelationData, or
3.1.1 ``reply_to`` + ``id``; ``client_id`` for the rate limit) on ``<p>/<id>/watch``:
``{"op": "add", "watch": {"question": "...", "threshold": 0.5, "debounce": 2, "cooldown_s": 30,
"every_windows": 1, "describe": false, "id": "dog"}}``, ``{"op": "remove", "watch_id": "dog"}``,
``{"op": "list"}``. Replies: ``{"type": "final", "ok": true, "id", "stream_id", "op", "watch_id",
"watches": [...]}``; errors are ``ok: false`` replies whose ``error`` has a one-line ``message`` and a ``code``: ``bad_request``,
``too_long``, ``too_many``, ``conflict``, ``unknown_watch`` or ``unknown_stream``. Who may register
is the broker ACL's decision (as for questions).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from omnizip_stream.query.outbox import OutMessage
from omnizip_stream.query.schema import encode, final_error, unknown_fields
from omnizip_stream.query.streams import lookup, on_change
from omnizip_stream.watch.delivery import AlertDelivery
from omnizip_stream.watch.spec import WatchError, watch_spec_from_mapping

logger = logging.getLogger(__name__)

FIELDS = {"op", "watch", "watch_id", "id", "reply_to", "client_id"}
OPS = ("add", "list", "remove")


def alert_message(alert: dict[str, Any], prefix: str, stream_id: str | None = None, *,
                  on_published: Any = None) -> OutMessage:
    """The outbox message of one alert: topic ``<prefix>/<stream_id>/alerts`` (default: the alert's), user properties.

    ``on_published`` is called once the broker acknowledged it (:attr:`OutMessage.on_published`).
    """
    sid = stream_id or str(alert["stream_id"])
    props = (("stream_id", sid), ("watch_id", str(alert["watch_id"])),
             ("probability", f"{float(alert['probability']):.6f}"), ("seq", str(alert.get("seq", ""))))
    return OutMessage(f"{prefix}/{sid}/alerts", encode(alert), user_properties=props, on_published=on_published)


class WatchDesk:
    """Answers ``<p>/<id>/watch`` requests for a query desk and publishes the streams' alerts.

    Args:
        desk: the server's :class:`~omnizip_stream.query.jobs.QueryDesk` (streams, outbox, counters).
        prefix: the topic prefix.
    """

    def __init__(self, desk: Any, prefix: str) -> None:
        self.desk = desk
        self.prefix = prefix
        self._attached: dict[str, tuple[Any, Any]] = {}  # stream id -> (its StreamWatches, our listener)
        self._deliveries: dict[str, AlertDelivery] = {}  # stream id -> its logged alerts' delivery

    def stream_of(self, topic: str) -> str | None:
        """The stream id of a ``<prefix>/<id>/watch`` topic, else None."""
        parts = topic.split("/")
        if len(parts) == 3 and parts[0] == self.prefix and parts[2] == "watch" and parts[1]:
            return parts[1]
        return None

    # ------------------------------------------------------------------ alerts out
    def attach_all(self) -> None:
        """Publish the alerts of every stream served now (called again on every change of the streams)."""
        ids = list(self.desk.streams.ids())
        for sid in ids:
            watches = getattr(lookup(self.desk.streams, sid), "watches", None)
            if watches is not None and self._attached.get(sid, (None,))[0] is not watches:
                listener = functools.partial(self.publish, sid)
                watches.listeners.append(listener)
                self._attached[sid] = (watches, listener)
                self._delivery(sid, watches.log)  # alerts logged and never acknowledged go first
        for sid in [s for s in self._attached if s not in ids]:
            watches, listener = self._attached.pop(sid)
            if listener in watches.listeners:
                watches.listeners.remove(listener)

    def publish(self, stream_id: str, alert: dict[str, Any]) -> None:
        """Queue one alert of ``stream_id`` (its MQTT id) for the broker, after its older unpublished ones (event loop)."""
        watches = self._attached.get(stream_id, (None,))[0]
        delivery = self._delivery(stream_id, getattr(watches, "log", None)) if "seq" in alert else None
        if delivery is None:  # not logged: published as it comes, within this process only
            self._put(stream_id, alert, None)
        else:
            delivery.offer(alert)

    def _put(self, stream_id: str, alert: dict[str, Any], on_published: Any) -> None:
        self.desk.outbox.put(alert_message(alert, self.prefix, stream_id, on_published=on_published))
        self.desk.counters["alerts_queued"] += 1

    def _delivery(self, stream_id: str, log: Any) -> AlertDelivery | None:
        """The stream's delivery over ``log`` (made, and its backlog queued, on first use); None without a log."""
        if log is None:
            return None
        delivery = self._deliveries.get(stream_id)
        if delivery is None or delivery.log.path != log.path:
            delivery = AlertDelivery(log, functools.partial(self._put, stream_id))
            self._deliveries[stream_id] = delivery
            replayed = delivery.catch_up()
            if replayed:
                self.desk.counters["alerts_replayed"] += replayed
        return delivery

    # ------------------------------------------------------------------ registrations in
    def handle(self, obj: Any, route: Any, request_id: Any, stream_id: str) -> None:
        """Answer one decoded registration request (already rate-limited); never raises."""
        op = obj.get("op") if isinstance(obj, dict) else None
        try:
            if not isinstance(obj, dict):
                raise WatchError("bad_request", "request must be a JSON object")
            if route is None:
                self.desk.reject(None, request_id, "bad_request", "no reply route", stream_id)
                return
            if (unknown := unknown_fields(obj, FIELDS)) is not None:
                raise WatchError("bad_request", unknown)
            if op not in OPS:
                raise WatchError("bad_request", f"'op' must be one of {', '.join(OPS)}")
            session = lookup(self.desk.streams, stream_id)
            watches = getattr(session, "watches", None)
            if watches is None:
                raise WatchError("unknown_stream", f"this server has no stream {stream_id!r}")
            watch_id = None
            if op == "add":
                spec = watch_spec_from_mapping(obj.get("watch"))
                engine = getattr(session, "engine", None)
                watch_id = watches.add(spec, check_question=engine.question_ids if engine is not None else None).spec.id
            elif op == "remove":
                watch_id = obj.get("watch_id")
                if not isinstance(watch_id, str):
                    raise WatchError("bad_request", "remove needs a 'watch_id' string")
                try:
                    watches.remove(watch_id)
                except KeyError:
                    raise WatchError("unknown_watch", f"stream {stream_id!r} has no watch {watch_id!r}") from None
        except WatchError as exc:
            self.desk.errors[exc.code] += 1
            self.desk.counters["rejected"] += 1
            if route is None:
                return
            reply = final_error(stream_id, request_id, exc.code, exc.message)
            if op in OPS:
                reply["op"] = op
            self.desk.outbox.put(OutMessage(route.topic, encode(reply), route.correlation))
            return
        reply = {"type": "final", "ok": True, "id": request_id, "stream_id": stream_id, "op": op}
        if watch_id is not None:
            reply["watch_id"] = watch_id
        reply["watches"] = watches.list()
        self.desk.counters["watch_ok"] += 1
        self.desk.outbox.put(OutMessage(route.topic, encode(reply), route.correlation))


def enable_watches(server: Any, *, registration: bool = True) -> WatchDesk:
    """Publish every stream's alerts on ``server`` (a :class:`~omnizip_stream.query.mqtt.MqttQueryServer`, before ``run``).

    Args:
        server: the MQTT server (one stream or many).
        registration: also subscribe ``<p>/<id>/watch`` (``<p>/+/watch``) for add/list/remove; a
            broker ACL must then let the server read those topics (else the subscription is refused).
    """
    desk = WatchDesk(server._desk, server.config.topic_prefix)
    if registration:
        server._desk.watch = desk
    desk.attach_all()
    on_change(server.streams, desk.attach_all)
    return desk
