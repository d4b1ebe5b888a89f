"""MQTT query server: answers questions about one live stream over an MQTT broker.

Topics (``<p>`` = ``config.topic_prefix``, default ``omnizip``):

- ``<p>/<stream_id>/query``: questions in (JSON, see :mod:`omnizip_stream.query.schema`).
- replies go to the MQTT 5 ResponseTopic (CorrelationData echoed) or, for 3.1.1 clients, to the
  payload's ``reply_to`` (its ``id`` echoed).
- ``<p>/<stream_id>/status``: retained JSON status, ``online`` while connected (refreshed every
  ``status_interval_s``), ``offline`` on shutdown or, through the last will, when the connection dies.

Delivery: QoS 1 with a persistent session under a fixed client id (MQTT 5: clean start off plus a
session expiry; 3.1.1: clean session off), so questions published while the server is away are
queued by the broker. Questions already received keep being answered while the broker is
unreachable; the replies wait in an outbox and are published after the reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from omnizip_stream.query.base import Answer, QueryError, QueryService
from omnizip_stream.query.connection import BrokerRefusedError, make_client, permanent_reason
from omnizip_stream.query.mqtt_config import MqttConfig, parse_broker_url
from omnizip_stream.query.outbox import Outbox, OutMessage, drain
from omnizip_stream.query.ratelimit import RateLimiter
from omnizip_stream.query.schema import (
    QueryRequest,
    RequestError,
    Route,
    check_reply_topic,
    client_key,
    decode_payload,
    encode,
    final_answer,
    final_error,
    json_safe,
    parse_request,
    partial,
    payload_route,
    salvage_route,
)

__all__ = ["BrokerRefusedError", "MqttConfig", "MqttQueryServer", "parse_broker_url"]

logger = logging.getLogger(__name__)

# Always present in stats() / the status message, so consumers can rely on the keys.
_COUNTERS = ("received", "accepted", "answered", "failed", "rejected", "unroutable", "partials",
             "ignored_retained", "connects", "connect_failures")


@dataclass
class _Job:
    request: QueryRequest
    route: Route
    received_s: float


class MqttQueryServer:
    """Serve ``service`` on the MQTT topics of ``config.stream_id`` until cancelled.

    Args:
        service: the stream session (``ask`` / ``ask_stream`` / ``stats``).
        config: broker, topics and limits.

    Example::

        server = MqttQueryServer(session, MqttConfig.from_url("mqtt://127.0.0.1:1883", stream_id="cam1"))
        await server.run()   # until cancelled; raises BrokerRefusedError on bad credentials/TLS
    """

    def __init__(self, service: QueryService, config: MqttConfig) -> None:
        self.service = service
        self.config = config
        self.counters: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.connected = asyncio.Event()
        # Bounded by the check in _on_message: running + waiting <= max_concurrent + max_queued.
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._outbox = Outbox(config.max_outbox)
        self._limiter = RateLimiter(config.rate_limit_per_s, config.rate_limit_burst)
        self._routes = config.route_policy()
        self._in_flight = 0
        self._started_s = time.monotonic()
        self._workers: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Connect, serve and reconnect forever; returns only by cancellation or a permanent refusal.

        Raises:
            BrokerRefusedError: the first connection was refused for a reason retrying cannot fix.
        """
        if self._workers:
            raise RuntimeError("MqttQueryServer.run() is already running")
        self._started_s = time.monotonic()
        self._workers = [asyncio.ensure_future(self._worker()) for _ in range(self.config.max_concurrent_queries)]
        try:
            await self._connection_loop()
        finally:
            await self._stop_workers()
            self._workers = []
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
            "queue_depth": self._queue.qsize(),
            "in_flight": self._in_flight,
            "outbox_depth": len(self._outbox),
            "outbox_published": self._outbox.published,
            "outbox_dropped": self._outbox.dropped,
            "rate_limited_clients": len(self._limiter),
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
                async with self._make_client() as client:
                    ever_connected = True
                    connected_at = time.monotonic()
                    await self._serve_connection(client)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                reason = permanent_reason(exc, cfg)
                if reason is not None and not ever_connected:
                    raise BrokerRefusedError(f"broker {cfg.url} refused the connection: {reason}") from None
                # A connection that held for a while resets the backoff; one dropped at once keeps backing
                # off (e.g. two servers for the same stream id share a client id and keep kicking each other).
                if connected_at is not None and time.monotonic() - connected_at >= cfg.reconnect_max_s:
                    backoff_s = cfg.reconnect_min_s
                delay_s = backoff_s * random.uniform(0.5, 1.0)
                detail = f"{exc} ({exc.__cause__})" if exc.__cause__ is not None else str(exc)
                logger.warning("MQTT broker %s %s: %s; reconnecting in %.2f s (client id %s)", cfg.url,
                               "connection lost" if connected_at is not None else "unreachable", detail, delay_s,
                               cfg.server_client_id)
                self.counters["connect_failures"] += 1
                await asyncio.sleep(delay_s)
                backoff_s = min(cfg.reconnect_max_s, backoff_s * 2)

    def _make_client(self) -> Any:
        import aiomqtt

        cfg = self.config
        will = aiomqtt.Will(cfg.status_topic, encode(self._status("offline", "connection lost", stats=False)),
                            qos=cfg.qos, retain=True)
        return make_client(cfg, cfg.server_client_id, persistent=True, will=will)

    async def _serve_connection(self, client: Any) -> None:
        cfg = self.config
        granted = await client.subscribe(cfg.query_topic, qos=cfg.qos)
        codes = [int(getattr(g, "value", g)) for g in granted]
        if any(c >= 0x80 for c in codes):
            raise BrokerRefusedError(f"broker {cfg.url} refused the subscription to {cfg.query_topic} (check its ACL)")
        self.counters["connects"] += 1
        await client.publish(cfg.status_topic, encode(self._status("online")), qos=cfg.qos, retain=True)
        self.connected.set()
        logger.info("MQTT query server for stream %r connected to %s as %s (MQTT %s); questions on %s",
                    cfg.stream_id, cfg.url, cfg.server_client_id, cfg.protocol, cfg.query_topic)
        tasks = [
            asyncio.ensure_future(self._reader(client)),
            asyncio.ensure_future(self._status_loop(client)),
            asyncio.ensure_future(drain(client, self._outbox, qos=cfg.qos, v5=cfg.protocol == "5")),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises the MqttError that ended the connection
            raise RuntimeError("MQTT connection tasks ended unexpectedly")
        except asyncio.CancelledError:
            await self._graceful_shutdown(client, tasks)
            raise
        finally:
            self.connected.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _graceful_shutdown(self, client: Any, tasks: list[asyncio.Task[None]]) -> None:
        """Stop reading, answer everything pending with ``not_ready``, flush replies, go offline."""
        reader, status, publisher = tasks
        for task in (reader, status):
            task.cancel()
        await asyncio.gather(reader, status, return_exceptions=True)
        await self._stop_workers()
        if not publisher.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._outbox.wait_idle(), 2.0)
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                client.publish(self.config.status_topic, encode(self._status("offline", "shutdown")),
                               qos=self.config.qos, retain=True), 2.0)
        logger.info("MQTT query server for stream %r stopped (status offline)", self.config.stream_id)

    async def _status_loop(self, client: Any) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(cfg.status_interval_s)
            await client.publish(cfg.status_topic, encode(self._status("online")), qos=cfg.qos, retain=True)

    def _status(self, state: str, reason: str | None = None, *, stats: bool = True) -> dict[str, Any]:
        cfg = self.config
        out: dict[str, Any] = {"state": state, "stream_id": cfg.stream_id, "protocol": cfg.protocol,
                               "query_topic": cfg.query_topic}
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

    # ------------------------------------------------------------------ requests in
    async def _reader(self, client: Any) -> None:
        async for message in client.messages:
            try:
                self._on_message(message)
            except Exception:  # never let one message stop the service
                logger.exception("unexpected error while handling a request")
                self.counters["handler_errors"] += 1

    def _on_message(self, message: Any) -> None:
        cfg = self.config
        self.counters["received"] += 1
        if message.retain:
            # A retained "question" would be re-asked on every reconnect; answer only live ones.
            self.counters["ignored_retained"] += 1
            logger.warning("ignored a retained message on %s", cfg.query_topic)
            return
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        route = None
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        if response_topic is not None:
            try:
                route = Route(check_reply_topic(response_topic, self._routes),
                              getattr(props, "CorrelationData", None))
            except RequestError as exc:
                self._reject(None, None, exc.code, f"ResponseTopic: {exc.message}")
                return
        obj: Any = None
        error: RequestError | None = None
        if len(payload) > cfg.max_payload_bytes:
            error = RequestError("too_long", f"payload is {len(payload)} bytes, limit {cfg.max_payload_bytes}")
        else:
            try:
                obj = decode_payload(payload)
            except RequestError as exc:
                error = exc
        if error is not None:  # recover reply_to/id from the complete members before the damage
            reply_to, request_id = salvage_route(payload, self._routes)
            self._reject(route or (Route(reply_to) if reply_to is not None else None), request_id, error.code,
                         error.message)
            return
        reply_to, request_id = payload_route(obj, self._routes)
        if route is None and reply_to is not None:
            route = Route(reply_to)
        declared = obj.get("client_id") if isinstance(obj, dict) else None
        key = client_key(declared if isinstance(declared, str) and len(declared) <= 64 else None, route)
        if key is not None and not self._limiter.allow(key):
            wait_s = self._limiter.retry_after_s(key)
            self._reject(route, request_id, "rate_limited",
                         f"too many requests from this client (limit {cfg.rate_limit_per_s:g}/s, burst "
                         f"{cfg.rate_limit_burst}); retry in {wait_s:.1f} s")
            return
        try:
            request = parse_request(obj, max_question_chars=cfg.max_question_chars,
                                    default_max_new_tokens=cfg.default_max_new_tokens,
                                    max_new_tokens_limit=cfg.max_new_tokens_limit,
                                    routes=self._routes)
        except RequestError as exc:
            self._reject(route, request_id, exc.code, exc.message)
            return
        if route is None:
            self._reject(None, request_id, "bad_request", "no reply route (no MQTT 5 ResponseTopic, no 'reply_to')")
            return
        if self._in_flight + self._queue.qsize() >= cfg.max_concurrent_queries + cfg.max_queued_queries:
            self._reject(route, request_id, "busy",
                         f"{self._in_flight} queries running and {self._queue.qsize()} waiting; try again later")
            return
        self._queue.put_nowait(_Job(request, route, time.monotonic()))
        self.counters["accepted"] += 1

    def _reject(self, route: Route | None, request_id: Any, code: str, message: str) -> None:
        self.errors[code] += 1
        if route is None:
            self.counters["unroutable"] += 1
            log = logger.warning if self.counters["unroutable"] in (1, 10, 100) or \
                self.counters["unroutable"] % 1000 == 0 else logger.debug
            log("request without a reply route dropped (%s: %s); %d so far", code, message,
                self.counters["unroutable"])
            return
        self.counters["rejected"] += 1
        self._send(route, final_error(self.config.stream_id, request_id, code, message))

    def _send(self, route: Route, reply: dict[str, Any], *, is_partial: bool = False) -> None:
        self._outbox.put(OutMessage(route.topic, encode(reply), route.correlation, is_partial))

    # ------------------------------------------------------------------ answering
    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
            self._in_flight += 1
            try:
                await self._answer(job)
            except asyncio.CancelledError:
                self._fail(job, "not_ready", "the service is shutting down")
                raise
            finally:
                self._in_flight -= 1
                self._queue.task_done()

    async def _stop_workers(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        while not self._queue.empty():
            self._fail(self._queue.get_nowait(), "not_ready", "the service is shutting down")

    async def _answer(self, job: _Job) -> None:
        req = job.request
        try:
            if req.stream:
                answer = await asyncio.wait_for(self._ask_streaming(job), self.config.query_timeout_s)
            else:
                answer = await asyncio.wait_for(self.service.ask(req.question, req.max_new_tokens),
                                                self.config.query_timeout_s)
            reply = final_answer(self.config.stream_id, req.request_id, answer,
                                 (time.monotonic() - job.received_s) * 1e3, max_new_tokens_used=req.max_new_tokens,
                                 note=req.note)
            if req.stream:
                reply["partials"] = answer.extra.get("partials", 0)
            payload = encode(reply)
        except QueryError as exc:
            self._fail(job, exc.code, exc.message)
        except asyncio.TimeoutError:
            self._fail(job, "internal", f"no answer after {self.config.query_timeout_s:g} s")
        except Exception as exc:  # a session bug must cost one answer, never the service
            logger.exception("query %r failed", req.question[:80])
            self._fail(job, "internal", f"internal error ({type(exc).__name__})")
        else:
            self.counters["answered"] += 1
            self._outbox.put(OutMessage(job.route.topic, payload, job.route.correlation))

    async def _ask_streaming(self, job: _Job) -> Answer:
        req = job.request
        t0 = time.monotonic()
        ttft_ms: float | None = None
        parts: list[str] = []
        final: Answer | None = None
        stream = self.service.ask_stream(req.question, req.max_new_tokens)
        try:
            async for item in stream:
                if isinstance(item, Answer):  # a session may end its stream with the full Answer
                    final = item
                    continue
                if not isinstance(item, str) or not item:
                    continue
                if ttft_ms is None:
                    ttft_ms = (time.monotonic() - t0) * 1e3
                self._send(job.route, partial(req.request_id, len(parts), item), is_partial=True)
                parts.append(item)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        self.counters["partials"] += len(parts)
        total_ms = (time.monotonic() - t0) * 1e3
        carried = getattr(stream, "answer", None)  # StreamSession's stream carries the complete Answer
        if final is None and isinstance(carried, Answer):
            final = carried
        if final is None:
            final = Answer("".join(parts), ttft_ms if ttft_ms is not None else total_ms, total_ms, None, None)
        return replace(final, extra={**final.extra, "partials": len(parts)})

    def _fail(self, job: _Job, code: str, message: str) -> None:
        self.errors[code] += 1
        self.counters["failed"] += 1
        self._send(job.route, final_error(self.config.stream_id, job.request.request_id, code, message))
