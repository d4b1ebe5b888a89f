"""MQTT query server: answers questions about one live stream over an MQTT broker.

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
import functools
import logging
import random
import time
import uuid
from collections import Counter
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
from omnizip_stream.query.jobs import ForwardingQueue, QueryDesk
from omnizip_stream.query.mqtt_config import MqttConfig, parse_broker_url
from omnizip_stream.query.outbox import Outbox, drain
from omnizip_stream.query.schema import encode, json_safe

__all__ = ["BrokerRefusedError", "MqttConfig", "MqttQueryServer", "StreamIdInUseError", "parse_broker_url"]

logger = logging.getLogger(__name__)

# Always present in stats() / the status message, so consumers can rely on the keys.
_COUNTERS = ("received", "accepted", "answered", "failed", "rejected", "unroutable", "partials",
             "ignored_retained", "connects", "connect_failures", "loop_errors")


class MqttQueryServer:
    """Serve ``service`` on the MQTT topics of ``config.stream_id`` until cancelled.

    Args:
        service: the stream session (``ask`` / ``ask_stream`` / ``stats``).
        config: broker, topics and limits.
        shutdown_grace_s: on cancellation, how long answers already running may take to finish.
        check_in_use: before every connect, refuse to serve a stream id another live server
            already answers (two servers with the same pinned client id would knock each other off
            forever; with different ids both would answer every question).

    Example::

        server = MqttQueryServer(session, MqttConfig.from_url("mqtt://127.0.0.1:1883", stream_id="cam1"))
        await server.run()   # until cancelled; raises BrokerRefusedError on bad credentials/TLS
    """

    def __init__(self, service: QueryService, config: MqttConfig, *, shutdown_grace_s: float = 3.0,
                 check_in_use: bool = True) -> None:
        self.service = service
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
        self._desk = QueryDesk(service, config, self._outbox, self.counters, self.errors)
        self._started_s = time.monotonic()
        self._running = False

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

    async def _serve_connection(self, client: Any) -> None:
        cfg = self.config
        tasks: list[asyncio.Task[None]] = []
        try:
            granted = await client.subscribe(cfg.query_topic, qos=cfg.qos)
            codes = [int(getattr(g, "value", g)) for g in granted]
            if any(c >= 0x80 for c in codes):
                raise BrokerRefusedError(
                    f"broker {cfg.url} refused the subscription to {cfg.query_topic} (check its ACL)")
            self.counters["connects"] += 1
            await client.publish(cfg.status_topic, encode(self._status("online")), qos=cfg.qos, retain=True)
            self.connected.set()
            logger.info("MQTT query server for stream %r connected to %s as %s (MQTT %s); questions on %s",
                        cfg.stream_id, cfg.url, self.client_id, cfg.protocol, cfg.query_topic)
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
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _graceful_shutdown(self, client: Any, tasks: list[asyncio.Task[None]]) -> None:
        """Answer what is running (up to the grace), refuse what waits, flush replies, go offline.

        ``tasks`` are the connection's (watcher, status loop, publisher), or empty when the
        cancellation came while connecting.
        """
        for task in tasks[1:2]:  # the status loop: no "online" after this
            task.cancel()
        await asyncio.gather(*tasks[1:2], return_exceptions=True)
        await self._desk.stop(self.shutdown_grace_s)
        if tasks and not tasks[2].done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._outbox.wait_idle(), 2.0)
        self._outbox.closing = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._publish_status(client, "offline", "shutdown")
        logger.info("MQTT query server for stream %r stopped (status offline)", self.config.stream_id)

    async def _publish_status(self, client: Any, state: str, reason: str) -> None:
        """Publish the retained status, best effort (2 s)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.publish(self.config.status_topic, encode(self._status(state, reason)),
                                                  qos=self.config.qos, retain=True), 2.0)

    @staticmethod
    async def _watch(client: Any) -> None:
        """Return only by raising ``MqttError`` when the connection drops (messages go to the inbox)."""
        async for _ in client.messages:
            pass

    async def _status_loop(self, client: Any) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(cfg.status_interval_s)
            await client.publish(cfg.status_topic, encode(self._status("online")), qos=cfg.qos, retain=True)

    def _status(self, state: str, reason: str | None = None, *, stats: bool = True) -> dict[str, Any]:
        cfg = self.config
        out: dict[str, Any] = {"state": state, "stream_id": cfg.stream_id, "protocol": cfg.protocol,
                               "query_topic": cfg.query_topic, "instance": self.instance,
                               "status_interval_s": cfg.status_interval_s}
        if reason is not None:
            out["reason"] = reason
        if stats:
            out["ts"] = round(time.time(), 3)
            out["server"] = self.stats()
            try:
                out["session"] = json_safe(self.service.stats())
            except Exception as exc:  # a broken stats() must not take the transport down
                out["session"] = {"error": f"{type(exc).__name__}: {exc}"}
        return out
