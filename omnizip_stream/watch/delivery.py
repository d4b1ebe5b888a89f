"""Durable alert delivery: a stream's logged alerts reach the broker at least once, across restarts.

:class:`AlertDelivery` is a cursor over one stream's :class:`~omnizip_stream.watch.log.AlertLog`,
driven on the event loop by the MQTT publisher (:class:`~omnizip_stream.watch.mqtt.WatchDesk`):

* When the publisher starts for the stream (server start, stream added at run time) it queues every
  logged alert above the log's *published marker*, oldest first, before the new ones.
* A new alert (already in the log) is queued directly when the cursor is caught up; otherwise it is
  left in the log and the cursor reaches it in ``seq`` order.
* At most ``max_pending`` of the stream's alerts wait for their acknowledgement at once (a long
  backlog never floods the outbox); the others stay in the log and are queued as acks come in.
* When the broker acknowledges an alert (QoS 1 PUBACK) and every alert before it is acknowledged
  too, the marker moves to it (:meth:`~omnizip_stream.watch.log.AlertLog.mark_published`: atomic
  replace).

Delivery is **at least once**: a crash between a PUBACK and the marker write, or an alert the outbox
dropped (overflow, poison) holding the marker back, makes the next start send those alerts again.
A logged alert is never lost. Subscribers can drop duplicates by the alert's ``seq`` (also a user property).
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from omnizip_stream.watch.log import AlertLog

logger = logging.getLogger(__name__)

MAX_PENDING = 256
"""Alerts of one stream in the outbox, unacknowledged, at once (the rest wait in the log)."""

Put = Callable[[dict[str, Any], Callable[[], None]], None]
"""Queue one alert for the broker; the callable is to be called once the broker acknowledged it."""


class AlertDelivery:
    """At-least-once delivery of one stream's logged alerts (see the module docstring; event loop only).

    Args:
        log: the stream's alert log (its marker file says what was delivered before).
        put: queues one alert with its acknowledgement callback (the server's outbox).
        max_pending: alerts of the stream queued and unacknowledged at once.
    """

    def __init__(self, log: AlertLog, put: Put, *, max_pending: int = MAX_PENDING) -> None:
        self.log = log
        self._put = put
        self.max_pending = max(1, max_pending)
        self.marked_seq = log.published_seq()  # every alert up to here reached the broker
        self.queued_seq = self.marked_seq  # every alert up to here was handed to the outbox (or marked)
        self._pending: deque[int] = deque()  # queued, not yet known acknowledged, in seq order
        self._acked: set[int] = set()
        self.replayed = 0  # alerts queued from the log rather than as they were made
        self._behind = True  # the log may hold alerts after the cursor (read it when there is room)

    def catch_up(self) -> int:
        """Queue logged alerts after the cursor, oldest first, up to ``max_pending`` waiting; returns how many."""
        room = self.max_pending - len(self._pending)
        if room <= 0:
            return 0
        queued = 0
        self._behind = False
        for alert in self.log.read(since=self.queued_seq):
            if queued >= room:
                self._behind = True
                break
            self._queue(alert)
            queued += 1
        if queued:
            logger.info("alert log %s: %d alert(s) queued from the log (seq %d..%d)", self.log.path, queued,
                        self._pending[-queued], self.queued_seq)
        self.replayed += queued
        return queued

    def offer(self, alert: dict[str, Any]) -> None:
        """A new alert of the stream (already appended to the log): queue it in ``seq`` order."""
        seq = int(alert.get("seq") or 0)
        if seq <= self.queued_seq:
            return  # already queued from the log, or delivered before
        if seq == self.queued_seq + 1 and len(self._pending) < self.max_pending:
            self._queue(alert)
        else:  # older alerts still wait in the log (or no room): they go first, this one after them
            self._behind = True
            self.catch_up()

    def _queue(self, alert: dict[str, Any]) -> None:
        seq = int(alert["seq"])
        self.queued_seq = seq
        self._pending.append(seq)
        self._put(alert, functools.partial(self._acknowledged, seq))

    def _acknowledged(self, seq: int) -> None:
        self._acked.add(seq)
        top = None
        while self._pending and self._pending[0] in self._acked:
            top = self._pending.popleft()
            self._acked.discard(top)
        if top is not None and top > self.marked_seq:
            try:
                self.log.mark_published(top)
                self.marked_seq = top
            except OSError as exc:  # the alerts were published; at worst they are sent again after a restart
                logger.warning("alert log %s: cannot write the published marker: %s", self.log.path, exc)
        if self._behind and len(self._pending) <= self.max_pending // 2:
            self.catch_up()
