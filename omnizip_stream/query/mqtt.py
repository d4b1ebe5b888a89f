"""MQTT query server: answers questions about one live stream, or many, over one MQTT connection.

Many streams (:meth:`MqttQueryServer.for_streams`, ``omnizip serve``): the topics below for every
stream of a directory that may change at run time, plus the server's own ``<p>/server/...`` topics
(status with the last will, stream control, the retained stream list): see
:mod:`~omnizip_stream.query.streams` and :mod:`~omnizip_stream.query.control`.

Topics (``<p>`` = ``config.topic_prefix``, default ``omnizip``):

- ``<p>/<stream_id>/query``: questions in (JSON, see :mod:`omnizip_stream.query.schema`).
- replies go to the MQTT 5 ResponseTopic (CorrelationData echoed) or, for 3.1.1 clients, to the
  payload's ``reply_to`` (its ``id`` echoed).
- ``<p>/<stream_id>/status``: retained JSON status, ``online`` while connected (refreshed every
  ``status_interval_s``), ``offline`` on shutdown or, through the last will, when the connection dies.

Delivery: QoS 1 with a persistent session (MQTT 5: clean start off plus a session expiry; 3.1.1:
clean session off) under the server's client id, ``omnizip-<stream_id>-<random>`` unless
``config.client_id`` pins it: the session survives reconnects and broker restarts, and with a pinned
id also server restarts (questions published while the server is away are queued by the broker).
A received question is in this process's queue before the broker gets its PUBACK, and that queue
outlives the connection: questions keep being answered while the broker is unreachable; the replies
wait in an outbox (:mod:`~omnizip_stream.query.outbox`) and are published after the reconnect.
Within one process nothing acknowledged is lost; a killed process loses the questions it had
accepted and not answered (clients retry after their timeout: at-least-once end to end).

Lifecycle: before every connect the server checks that no other live server answers the
stream id (:class:`StreamIdInUseError`); cancelling :meth:`MqttQueryServer.run` shuts down
gracefully (running answers get ``shutdown_grace_s``, queued ones ``shutting_down``, then status
``offline`` with reason ``shutdown``); an unexpected error publishes ``offline`` and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from omnizip_stream.query.base import QueryService
from omnizip_stream.query.connection import (
    BrokerRefusedError,
    StreamIdInUseError,
    live_server_instance,
    make_client,
    permanent_reason,
    taken_over,
)
from omnizip_stream.query.control import ControlDesk, ControlError
from omnizip_stream.query.jobs import ForwardingQueue, QueryDesk
from omnizip_stream.query.mqtt_config import MqttConfig, parse_broker_url
from omnizip_stream.query.outbox import Outbox, drain
from omnizip_stream.query.schema import encode
from omnizip_stream.query.status import StatusPublishing
from omnizip_stream.query.streams import (
    SERVER_ID,
    SingleStream,
    StreamControl,
    StreamDirectory,
    on_change,
)

__all__ = ["BrokerRefusedError", "MqttConfig", "MqttQueryServer", "StreamIdInUseError", "parse_broker_url"]

logger = logging.getLogger(__name__)

# Always present in stats() / the status message, so consumers can rely on the keys.
_COUNTERS = ("received", "accepted", "answered", "failed", "rejected", "unroutable", "partials",
             "ignored_retained", "connects", "connect_failures", "loop_errors")


class MqttQueryServer(StatusPublishing):
    """Serve ``service`` on the MQTT topics of ``config.stream_id`` (or every stream of ``streams``) until cancelled.

    Args:
        service: the stream session (``ask`` / ``ask_stream`` / ``stats``); None with ``streams``.
        config: broker, topics and limits.
        shutdown_grace_s: on cancellation, how long answers already running may take to finish.
        check_in_use: before every connect, refuse to serve a stream id another live server
            already answers (two servers with the same pinned client id would knock each other off
            forever; with different ids both would answer every question); a many-stream server
            checks the server id, and each stream id added over MQTT.
        streams: serve every stream of this directory on one connection (prefer
            :meth:`for_streams`, which also sets up stream control); ``config.stream_id`` becomes
            the reserved ``server``.

    Example::

        server = MqttQueryServer(session, MqttConfig.from_url("mqtt://127.0.0.1:1883", stream_id="cam1"))
        await server.run()   # until cancelled; raises BrokerRefusedError on bad credentials/TLS
    """

    def __init__(self, service: QueryService | None, config: MqttConfig, *, shutdown_grace_s: float = 3.0,
                 check_in_use: bool = True, streams: StreamDirectory | None = None) -> None:
        self.routed = streams is not None  # many streams: see for_streams()
        if streams is None:
            if service is None:
                raise ValueError("MqttQueryServer needs a service (one stream) or streams (many)")
            streams = SingleStream(config.stream_id, service)
        elif config.stream_id != SERVER_ID:
            config = dataclasses.replace(config, stream_id=SERVER_ID)
        self.service = service
        self.streams = streams
        self.config = config
        self.shutdown_grace_s = shutdown_grace_s
        self.check_in_use = check_in_use
        # Random by default: a predictable id lets any client take over the server's session.
        self.client_id = config.client_id or f"omnizip-{config.stream_id}-{uuid.uuid4().hex[:8]}"
        self.instance = uuid.uuid4().hex[:12]  # published in the status (the client id is not)
        self.counters: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.connected = asyncio.Event()
        self.connect_failed = asyncio.Event()  # set by every failed connection attempt
        self.last_error: str | None = None
        self._outbox = Outbox(config.max_outbox)
        self._desk = QueryDesk(streams, config, self._outbox, self.counters, self.errors, routed=self.routed)
        self._started_s = time.monotonic()
        self._running = False
        self._changed = asyncio.Event()  # the set of streams changed: republish the list and statuses
        self._announced: set[str] = set()  # streams whose status this server published online
        self._loop: asyncio.AbstractEventLoop | None = None
        if self.routed:
            on_change(streams, self._streams_changed)

    @classmethod
    def for_streams(cls, streams: StreamDirectory, config: MqttConfig, *, admin_token: str | None = None,
                    make_spec: Callable[[Mapping[str, Any]], Any] = dict, **kwargs: Any) -> MqttQueryServer:
        """A server answering every stream of ``streams`` on one connection (``omnizip serve``).

        Args:
            streams: the streams (``ids()``, ``session(id)``; with ``add``/``remove`` for control).
            config: broker and limits; its ``stream_id`` is replaced by the reserved ``server``.
            admin_token: the secret of ``<prefix>/server/streams`` requests; None disables control.
            make_spec: builds what ``streams.add`` takes from a request's ``stream`` mapping.
            **kwargs: as for the constructor (``shutdown_grace_s``, ``check_in_use``).

        Example::

            server = MqttQueryServer.for_streams(stream_server, MqttConfig.from_url(url, stream_id="server"),
                                                 admin_token=settings.admin_token)
            await server.run()
        """
        server = cls(None, config, streams=streams, **kwargs)
        if not (callable(getattr(streams, "add", None)) and callable(getattr(streams, "remove", None))):
            admin_token = None  # a fixed set of streams: control requests are answered forbidden
        control: StreamControl = streams  # type: ignore[assignment]
        server._desk.control = ControlDesk(
            server._desk, control, admin_token=admin_token, make_spec=make_spec, changed=server._streams_changed,
            before_add=server._check_stream_free if server.check_in_use else None)
        return server

    async def _check_stream_free(self, stream_id: str) -> None:
        """Refuse to add a stream id another live server (e.g. a ``serve-mqtt``) answers on this broker."""
        other = await live_server_instance(dataclasses.replace(self.config, stream_id=stream_id), self.instance)
        if other is not None:
            raise ControlError("conflict", f"another live server already answers stream id {stream_id!r} here")

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Connect, serve and reconnect forever; returns only by cancellation or a permanent refusal.

        Raises:
            BrokerRefusedError: the first connection was refused for a reason retrying cannot fix.
            StreamIdInUseError: another live server answers this stream id (checked before every
                connect, so also after being taken over), or the broker said another client took
                over this server's client id.
        """
        if self._running:
            raise RuntimeError("MqttQueryServer.run() is already running")
        self._running = True
        self._loop = asyncio.get_running_loop()
        self._started_s = time.monotonic()
        self._outbox.closing = False
        self._desk.start()
        try:
            await self._connection_loop()
        finally:
            await self._desk.stop(0.0)
            self._running = False
            self.connected.clear()

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Wait until the server is connected and subscribed (TimeoutError after ``timeout_s``)."""
        await asyncio.wait_for(self.connected.wait(), timeout_s)

    def stats(self) -> dict[str, Any]:
        """Transport counters: requests received/answered, errors by code, queue and outbox depths."""
        counters = {name: self.counters[name] for name in _COUNTERS}
        counters.update(self.counters)
        return {
            **counters,
            "errors": dict(self.errors),
            "queue_depth": len(self._desk.jobs),
            "in_flight": self._desk.in_flight,
            "outbox_depth": len(self._outbox),
            "outbox_published": self._outbox.published,
            "outbox_dropped": self._outbox.dropped,
            "dropped_poison": self._outbox.dropped_poison,
            "rate_limited_clients": self._desk.rate_limited_clients,
            "uptime_s": round(time.monotonic() - self._started_s, 3),
        }

    # ------------------------------------------------------------------ connection
    async def _connection_loop(self) -> None:
        import aiomqtt

        cfg = self.config
        backoff_s = cfg.reconnect_min_s
        ever_connected = False
        while True:
            connected_at = None
            try:
                if self.check_in_use:  # also on reconnects: another server may have taken over meanwhile
                    other = await live_server_instance(cfg, self.instance)
                    if other is not None and self.routed:
                        raise StreamIdInUseError(
                            f"another stream server already runs on {cfg.url} (status {cfg.status_topic} is "
                            "online and it is alive); stop it or use another topic prefix")
                    if other is not None:
                        raise StreamIdInUseError(
                            f"another server already answers stream id {cfg.stream_id!r} on {cfg.url} (status "
                            f"{cfg.status_topic} is online and it is alive); stop it or choose another --stream-id")
                async with self._make_client() as client:
                    ever_connected = True
                    connected_at = time.monotonic()
                    await self._serve_connection(client)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                if taken_over(exc):
                    raise StreamIdInUseError(
                        f"another client connected to {cfg.url} with this server's client id {self.client_id!r} "
                        "and took over its session (two servers with the same --client-id?)") from None
                reason = permanent_reason(exc, cfg)
                if reason is not None and not ever_connected:
                    raise BrokerRefusedError(f"broker {cfg.url} refused the connection: {reason}") from None
                detail = f"{exc} ({exc.__cause__})" if exc.__cause__ is not None else str(exc)
                state = "connection lost" if connected_at is not None else "unreachable"
            except BrokerRefusedError:
                raise
            except Exception as exc:  # a bug must never end the service silently: log, go offline, reconnect
                self.connected.clear()
                logger.exception("MQTT query server for stream %r failed; reconnecting", cfg.stream_id)
                self.counters["loop_errors"] += 1
                detail, state = f"{type(exc).__name__}: {exc}", "error"
            # A connection that held for a while resets the backoff; one dropped at once keeps backing off.
            if connected_at is not None and time.monotonic() - connected_at >= cfg.reconnect_max_s:
                backoff_s = cfg.reconnect_min_s
            delay_s = backoff_s * random.uniform(0.5, 1.0)
            # The first failure before any connect is for the caller to judge (serve-mqtt gives up at once).
            log = logger.info if not ever_connected and not self.connect_failed.is_set() else logger.warning
            log("MQTT broker %s %s: %s; reconnecting in %.2f s (client id %s)", cfg.url, state, detail, delay_s,
                self.client_id)
            self.counters["connect_failures"] += 1
            self.last_error = detail
            self.connect_failed.set()
            await asyncio.sleep(delay_s)
            backoff_s = min(cfg.reconnect_max_s, backoff_s * 2)

    def _make_client(self) -> Any:
        import aiomqtt

        cfg = self.config
        will = aiomqtt.Will(cfg.status_topic, encode(self._status("offline", "connection lost", stats=False)),
                            qos=cfg.qos, retain=True)
        # Received questions go straight to the desk's inbox, which outlives this client object.
        return make_client(cfg, self.client_id, persistent=True, will=will,
                           queue_type=functools.partial(ForwardingQueue, self._desk.inbox))

    @property
    def subscriptions(self) -> list[str]:
        """Topics the server subscribes to: one stream's query topic, or every stream's and the control topic."""
        watch = self._desk.watch is not None  # standing questions (omnizip_stream.watch.mqtt.enable_watches)
        if not self.routed:
            return [self.config.query_topic] + ([f"{self.config.topic_prefix}/{self.config.stream_id}/watch"]
                                                if watch else [])
        return [f"{self.config.topic_prefix}/+/query", self._desk.control_topic] + (
            [f"{self.config.topic_prefix}/+/watch"] if watch else [])

    async def _serve_connection(self, client: Any) -> None:
        cfg = self.config
        tasks: list[asyncio.Task[None]] = []
        try:
            topics = self.subscriptions
            granted = await client.subscribe([(topic, cfg.qos) for topic in topics])
            codes = [int(getattr(g, "value", g)) for g in granted]
            if any(c >= 0x80 for c in codes):
                raise BrokerRefusedError(
                    f"broker {cfg.url} refused the subscription to {' and '.join(topics)} (check its ACL)")
            self.counters["connects"] += 1
            self._changed.clear()
            await self._publish_statuses(client, "online", with_list=True)
            self.connected.set()
            logger.info("MQTT query server for stream %r connected to %s as %s (MQTT %s); questions on %s",
                        cfg.stream_id, cfg.url, self.client_id, cfg.protocol, " ".join(topics))
            tasks = [
                asyncio.ensure_future(self._watch(client)),
                asyncio.ensure_future(self._status_loop(client)),
                asyncio.ensure_future(drain(client, self._outbox, qos=cfg.qos, v5=cfg.protocol == "5")),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises the MqttError that ended the connection
            raise RuntimeError("MQTT connection tasks ended unexpectedly")
        except asyncio.CancelledError:
            await self._graceful_shutdown(client, tasks)
            raise
        except Exception as exc:
            import aiomqtt

            if not isinstance(exc, (aiomqtt.MqttError, BrokerRefusedError)):
                # We are about to disconnect cleanly, so the broker will not publish the last will.
                await self._publish_status(client, "offline", f"internal error ({type(exc).__name__})")
            raise
        finally:
            self.connected.clear()
            for task in tasks:
                task.cancel()
            await cancel_and_wait(tasks)

    async def _graceful_shutdown(self, client: Any, tasks: list[asyncio.Task[None]]) -> None:
        """Answer what is running (up to the grace), refuse what waits, flush replies, go offline.

        ``tasks`` are the connection's (watcher, status loop, publisher), or empty when the
        cancellation came while connecting.
        """
        await cancel_and_wait(tasks[1:2])  # the status loop: no "online" after this
        await self._desk.stop(self.shutdown_grace_s)
        if tasks and not tasks[2].done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._outbox.wait_idle(), 2.0)
        self._outbox.closing = True
        for task in tasks:
            task.cancel()
        await cancel_and_wait(tasks)
        await self._publish_status(client, "offline", "shutdown")
        logger.info("MQTT query server for stream %r stopped (status offline)", self.config.stream_id)

    @staticmethod
    async def _watch(client: Any) -> None:
        """Return only by raising ``MqttError`` when the connection drops (messages go to the inbox)."""
        async for _ in client.messages:
            pass


async def cancel_and_wait(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until they are done, cancelling again if one swallowed it.

    Python 3.11's ``asyncio.wait_for`` (used inside aiomqtt's publish) loses a cancellation that
    arrives as the awaited operation completes; the status loop then published on and a shutdown
    waited for it forever.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    await asyncio.gather(*tasks, return_exceptions=True)
