"""Replies waiting for the broker: a bounded FIFO that survives reconnects, and its pipelined drain.

Answers are computed whether or not the broker is reachable; they wait here and are published
(QoS 1, in order) after the next connect. A publish that was not acknowledged when the connection
dropped is put back at the front and sent again, so replies are delivered at least once (a reply
whose PUBACK was lost can arrive twice; clients match replies by correlation data / ``id``).

Poison: a reply the broker cannot take (a topic that is not valid UTF-8, a control character the
broker calls a malformed packet and answers by closing the connection) must not block the outbox
forever. A publish that raises before reaching the wire is dropped at once; a reply that was
unacknowledged when a connection died gets a *strike* and is sent alone (nothing pipelined after
it) on the next connections; at its ``POISON_STRIKES``-th dead connection (alone in flight) it is
dropped. Both are counted in ``Outbox.dropped_poison``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


# A reply is dropped as poison at its POISON_STRIKES-th dead connection, the last ones with it alone in
# flight. A malformed reply kills every connection at once; two deaths were not enough to tell it from
# back-to-back broker restarts under load (a legitimate reply was dropped in 1 of several 400-question runs).
POISON_STRIKES = 3

@dataclass(frozen=True)
class OutMessage:
    """One reply to publish.

    Attributes:
        topic: destination topic.
        payload: encoded JSON.
        correlation: MQTT 5 CorrelationData to echo (None for 3.1.1 routes).
        partial: True for a streamed partial answer (dropped first when the outbox overflows).
        strikes: connections that died while this reply was unacknowledged.
        user_properties: MQTT 5 user properties ``(name, value)`` (alerts of standing questions).
        on_published: called (event loop) once the broker acknowledged it (QoS 1: its PUBACK); an
            alert's publisher records its delivery there. Not called for a reply that is dropped.
    """

    topic: str
    payload: bytes
    correlation: bytes | None = None
    partial: bool = False
    strikes: int = 0
    user_properties: tuple[tuple[str, str], ...] = ()
    on_published: Callable[[], None] | None = field(default=None, compare=False, repr=False)


class Outbox:
    """Bounded FIFO of :class:`OutMessage`; overflow drops the oldest partial, else the oldest reply.

    Args:
        max_messages: capacity.
    """

    def __init__(self, max_messages: int) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, not {max_messages}")
        self.max_messages = max_messages
        self._items: deque[OutMessage] = deque()
        self._event = asyncio.Event()
        self.dropped = 0
        self.dropped_poison = 0
        self.published = 0
        self.closing = False  # set at shutdown: replies cut off by our own disconnect get no strike
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def inflight(self) -> int:
        """Replies handed to the broker whose PUBACK has not arrived (maintained by :func:`drain`)."""
        return self._inflight

    @inflight.setter
    def inflight(self, value: int) -> None:
        self._inflight = value
        self._update_idle()

    async def wait_idle(self) -> None:
        """Return once nothing is queued and nothing is awaiting its PUBACK."""
        await self._idle.wait()

    def put(self, msg: OutMessage) -> None:
        """Append a reply (never blocks)."""
        self._items.append(msg)
        self._trim()
        self._event.set()
        self._update_idle()

    def requeue_front(self, msgs: list[OutMessage]) -> None:
        """Put unacknowledged replies back at the front, keeping their order."""
        if not msgs:
            return
        self._items.extendleft(reversed(msgs))
        self._trim()
        self._event.set()
        self._update_idle()

    def acknowledged(self, msg: OutMessage) -> None:
        """Count a reply the broker acknowledged and run its ``on_published`` (a failing one is logged)."""
        self.published += 1
        if msg.on_published is not None:
            try:
                msg.on_published()
            except Exception:  # noqa: BLE001 - the drain goes on
                logger.exception("on_published of a reply to %r failed", msg.topic)

    def drop_poison(self, msg: OutMessage, why: str) -> None:
        """Count and log a reply that is never sent again (see the module docstring)."""
        self.dropped_poison += 1
        logger.warning("dropped a reply to %r that the broker does not take (%s); %d such so far", msg.topic, why,
                       self.dropped_poison)
        self._update_idle()

    def head_is_suspect(self) -> bool:
        """True if the oldest reply was unacknowledged when a connection died (it is sent alone)."""
        return bool(self._items) and self._items[0].strikes > 0

    def popleft(self) -> OutMessage:
        """Take the oldest reply (the outbox must not be empty)."""
        msg = self._items.popleft()
        if not self._items:
            self._event.clear()
        self._update_idle()
        return msg

    async def wait(self) -> None:
        """Return once the outbox is not empty."""
        while not self._items:
            self._event.clear()
            await self._event.wait()

    def __len__(self) -> int:
        return len(self._items)

    def _update_idle(self) -> None:
        if self._items or self._inflight:
            self._idle.clear()
        else:
            self._idle.set()

    def _trim(self) -> None:
        while len(self._items) > self.max_messages:
            victim = next((m for m in self._items if m.partial), None)
            if victim is not None:
                self._items.remove(victim)
            else:
                victim = self._items.popleft()
            self.dropped += 1
            logger.warning("reply outbox full (%d): dropped a reply to %s", self.max_messages, victim.topic)


def publish_properties(msg: OutMessage) -> Any:
    """MQTT 5 PUBLISH properties of a reply: JSON content type, the echoed CorrelationData, user properties."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    if msg.correlation is not None:
        props.CorrelationData = msg.correlation
    if msg.user_properties:
        props.UserProperty = list(msg.user_properties)
    return props


async def drain(client: Any, outbox: Outbox, *, qos: int, v5: bool, max_inflight: int = 16) -> None:
    """Publish the outbox forever over one connection, up to ``max_inflight`` unacknowledged at once.

    Publishes are issued in outbox order (so partials of one answer arrive in order). A reply with a
    strike is published alone. Returns only by raising: the publish error, or ``CancelledError``
    when the connection is torn down; in both cases every reply not yet acknowledged goes back to
    the front of the outbox with one more strike, except a suspect that was alone in flight: that one
    is dropped as poison.

    Args:
        client: a connected ``aiomqtt.Client``.
        outbox: the shared outbox.
        qos: publish QoS.
        v5: whether the connection is MQTT 5 (properties are only sent then).
        max_inflight: publishes awaiting their PUBACK at the same time.
    """
    import aiomqtt

    inflight: list[tuple[OutMessage, asyncio.Task[None]]] = []
    getter: asyncio.Future[None] | None = None
    try:
        while True:
            while len(inflight) < max_inflight and len(outbox):
                if inflight and (outbox.head_is_suspect() or inflight[-1][0].strikes):
                    break  # a suspect travels alone
                msg = outbox.popleft()
                try:
                    coro = client.publish(
                        msg.topic, msg.payload, qos=qos, properties=publish_properties(msg) if v5 else None,
                        timeout=math.inf,
                    )
                except Exception as exc:  # pragma: no cover - aiomqtt's publish is a coroutine function
                    outbox.drop_poison(msg, f"{type(exc).__name__}: {exc}")
                    continue
                inflight.append((msg, asyncio.ensure_future(coro)))
            outbox.inflight = len(inflight)
            waiters: set[asyncio.Future[Any]] = {t for _, t in inflight}
            if not len(outbox):  # else we are waiting for PUBACKs (the window is full, or a suspect is out)
                getter = asyncio.ensure_future(outbox.wait())
                waiters.add(getter)
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if getter is not None:
                getter.cancel()
                getter = None
            remaining = []
            error: BaseException | None = None
            for msg, task in inflight:
                if not task.done():
                    remaining.append((msg, task))
                    continue
                failure = task.exception()
                if failure is None:
                    outbox.acknowledged(msg)
                elif isinstance(failure, aiomqtt.MqttError):
                    remaining.append((msg, task))  # requeued in `finally`
                    error = error or failure
                else:  # raised before reaching the wire (e.g. UnicodeEncodeError): it can never be sent
                    outbox.drop_poison(msg, f"{type(failure).__name__}: {failure}")
            inflight = remaining
            outbox.inflight = len(inflight)
            if error is not None:
                raise error
    finally:
        # Synchronous up to the requeue: a second cancellation (the connection being torn down while
        # this ends by its own error) must not interrupt it and lose the unacknowledged replies.
        if getter is not None:
            getter.cancel()
        unacked = []
        for msg, task in inflight:
            if task.done() and not task.cancelled() and task.exception() is None:
                outbox.acknowledged(msg)
            else:
                unacked.append(msg)
                task.cancel()
        outbox.inflight = 0
        if not outbox.closing:
            if len(unacked) == 1 and unacked[0].strikes >= POISON_STRIKES - 1:
                outbox.drop_poison(unacked[0], f"the connection died {POISON_STRIKES} times while it was unacknowledged")
                unacked = []
            unacked = [dataclasses.replace(m, strikes=m.strikes + 1) for m in unacked]
        outbox.requeue_front(unacked)
        await asyncio.gather(*(t for _, t in inflight), return_exceptions=True)
