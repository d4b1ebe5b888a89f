"""Questions in, answers out: the MQTT server's intake, its fair job queue and its workers.

Nothing here touches a connection. Raw MQTT messages land in :attr:`QueryDesk.inbox` (an
``asyncio.Queue`` that outlives every client object, filled by :class:`ForwardingQueue`, i.e. by
the MQTT library's receive callback right before it acknowledges the PUBLISH), so a question the
broker has been told we received is already in this process's memory; it is then validated,
rate-limited, queued per stream and reply route (:class:`~omnizip_stream.query.fairqueue.FairQueue`:
streams take turns, and within a stream the routes) and answered by ``max_concurrent_queries``
workers. Replies and refusals go to the shared :class:`~omnizip_stream.query.outbox.Outbox`.

A desk serves a :class:`~omnizip_stream.query.streams.StreamDirectory`: one stream (every message is
that stream's question) or, ``routed``, the streams of the ``<prefix>/<id>/query`` topics the
messages arrive on, plus the control requests of ``<prefix>/server/streams`` handed to ``control``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from omnizip_stream.query.base import Answer, QueryError
from omnizip_stream.query.fairqueue import FairQueue, ForwardingQueue
from omnizip_stream.query.mqtt_config import MqttConfig
from omnizip_stream.query.outbox import Outbox, OutMessage
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
    parse_request,
    partial,
    payload_route,
    salvage_route,
)
from omnizip_stream.query.streams import StreamDirectory, lookup, stream_of_topic

__all__ = ["FairQueue", "ForwardingQueue", "Job", "QueryDesk"]

logger = logging.getLogger(__name__)

# A reply route may carry several declared client ids (a gateway); it gets this many times a client's
# rate and burst, so rotating the declared id buys a flooder at most this factor.
ROUTE_RATE_FACTOR = 4


@dataclass
class Job:
    """An accepted question and where its answer goes."""

    request: QueryRequest
    route: Route
    received_s: float
    stream_id: str


class QueryDesk:
    """Intake, fair queue and workers of the MQTT query server (see the module docstring).

    Args:
        streams: the streams answered (their sessions' ``ask`` / ``ask_stream``).
        config: limits and topics.
        outbox: where replies are put.
        counters: shared server counters (``received``, ``accepted``, ``answered`` ...).
        errors: shared counts of error replies by code.
        routed: route each message by its topic's stream id (else every message is for
            ``config.stream_id``).
    """

    def __init__(self, streams: StreamDirectory, config: MqttConfig, outbox: Outbox, counters: Counter[str],
                 errors: Counter[str], *, routed: bool = False) -> None:
        self.streams = streams
        self.routed = routed
        self.config = config
        self.control: Any = None  # handles <prefix>/server/streams requests (routed desks; see control.py)
        self.control_topic = f"{config.topic_prefix}/server/streams"
        self.watch: Any = None  # handles <prefix>/<id>/watch requests (omnizip_stream.watch.mqtt.WatchDesk)
        self.outbox = outbox
        self.counters = counters
        self.errors = errors
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.jobs: FairQueue[Job] = FairQueue(depth=2)  # (stream id, reply route)
        self.in_flight = 0
        self.running: Counter[str] = Counter()  # answers in progress per stream (max_concurrent_queries each)
        self.closing: str | None = None  # set at shutdown: new questions get this error message
        self._limiter = RateLimiter(config.rate_limit_per_s, config.rate_limit_burst)
        self._route_limiter = RateLimiter(config.rate_limit_per_s * ROUTE_RATE_FACTOR,
                                          config.rate_limit_burst * ROUTE_RATE_FACTOR)
        self._routes = config.route_policy()
        self._stream_routes: dict[str, Any] = {}  # stream id -> its RoutePolicy (its own reply area)
        self._tasks: list[asyncio.Task[None]] = []
        self._answering: set[asyncio.Task[None]] = set()

    @property
    def rate_limited_clients(self) -> int:
        """Rate-limit buckets currently tracked."""
        return len(self._limiter) + len(self._route_limiter)

    def start(self) -> None:
        """Start the intake task and the workers (call from the running loop)."""
        self.closing = None
        self._tasks = [asyncio.ensure_future(self._intake())]
        self._tasks += [asyncio.ensure_future(self._worker()) for _ in range(self.config.max_concurrent_queries)]
        self._grow_workers()

    @property
    def slots(self) -> int:
        """Answers that may run at once: ``max_concurrent_queries`` per stream served."""
        streams = max(1, len(self.streams.ids())) if self.routed else 1
        return self.config.max_concurrent_queries * streams

    def _grow_workers(self) -> None:
        """One worker per slot (many-stream desks gain workers as streams are added; idle ones cost nothing)."""
        if self._tasks and self.closing is None:
            self._tasks += [asyncio.ensure_future(self._worker()) for _ in range(self.slots - len(self._tasks) + 1)]

    def _blocked(self) -> set[str]:
        """Streams with ``max_concurrent_queries`` answers running: their next question waits."""
        limit = self.config.max_concurrent_queries
        return {sid for sid, n in self.running.items() if n >= limit}

    async def stop(self, grace_s: float = 0.0, reason: str = "the service is shutting down") -> None:
        """Refuse new questions, let running answers finish for up to ``grace_s``, refuse the rest.

        Every question received so far gets a reply in the outbox: its answer, or a
        ``shutting_down`` error.
        """
        self.closing = reason
        for task in self._tasks[1:]:  # workers stop taking jobs; running answers continue below
            task.cancel()
        if self.control is not None:  # an add/remove not finished is answered shutting_down
            await self.control.stop()
        self._intake_now()
        if self._answering and grace_s > 0:
            await asyncio.wait(set(self._answering), timeout=grace_s)
        for task in [*self._answering, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._answering, *self._tasks, return_exceptions=True)
        self._tasks = []
        self._intake_now()
        while len(self.jobs):
            self.fail(self.jobs.pop(), "shutting_down", reason)

    def _intake_now(self) -> None:
        """Handle every message already received (used at shutdown, when the intake task is gone)."""
        while not self.inbox.empty():
            self.on_message(self.inbox.get_nowait())

    # ------------------------------------------------------------------ requests in
    async def _intake(self) -> None:
        while True:
            self.on_message(await self.inbox.get())

    def on_message(self, message: Any) -> None:
        """Validate one received MQTT message and queue it, or reply with an error; never raises."""
        try:
            self._on_message(message)
        except Exception:  # never let one message stop the service
            logger.exception("unexpected error while handling a request")
            self.counters["handler_errors"] += 1

    def _on_message(self, message: Any) -> None:
        cfg = self.config
        self.counters["received"] += 1
        stream_id, control = cfg.stream_id, False
        topic = str(getattr(message, "topic", ""))
        watch = self.watch.stream_of(topic) if self.watch is not None else None  # <p>/<id>/watch
        if self.routed:
            control = topic == self.control_topic and self.control is not None
            found = None if control else watch or stream_of_topic(topic, cfg.topic_prefix)
            if found is None and not control:
                self.counters["ignored_topic"] += 1
                return
            stream_id = found or cfg.stream_id
        if message.retain:
            # A retained "question" would be re-asked on every reconnect; answer only live ones.
            self.counters["ignored_retained"] += 1
            logger.warning("ignored a retained message on %s/%s/query", cfg.topic_prefix, stream_id)
            return
        routes = self._route_policy(stream_id)
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        route = None
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        if response_topic is not None:
            try:
                route = Route(check_reply_topic(response_topic, routes), getattr(props, "CorrelationData", None))
            except RequestError as exc:
                self.reject(None, None, exc.code, f"ResponseTopic: {exc.message}")
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
            salvaged_to, salvaged_id = salvage_route(payload, routes)
            self.reject(route or (Route(salvaged_to) if salvaged_to is not None else None), salvaged_id, error.code,
                        error.message, stream_id)
            return
        reply_to, request_id = payload_route(obj, routes)
        if route is None and reply_to is not None:
            route = Route(reply_to)
        if self.closing is not None:
            self.reject(route, request_id, "shutting_down", self.closing, stream_id)
            return
        declared = obj.get("client_id") if isinstance(obj, dict) else None
        if not self._allow(declared if isinstance(declared, str) and len(declared) <= 64 else None, route,
                           request_id, stream_id):
            return
        if control:
            self.control.handle(obj, route, request_id, routes)
            return
        if watch is not None:
            self.watch.handle(obj, route, request_id, stream_id)
            return
        service = lookup(self.streams, stream_id)
        if service is None:  # never list the streams that are served: the requester may not know them
            self.reject(route, request_id, "unknown_stream", f"this server has no stream {stream_id!r}", stream_id)
            return
        try:
            request = parse_request(obj, max_question_chars=cfg.max_question_chars,
                                    default_max_new_tokens=cfg.default_max_new_tokens,
                                    max_new_tokens_limit=cfg.max_new_tokens_limit, routes=routes)
        except RequestError as exc:
            self.reject(route, request_id, exc.code, exc.message, stream_id)
            return
        if route is None:
            self.reject(None, request_id, "bad_request", "no reply route (no MQTT 5 ResponseTopic, no 'reply_to')")
            return
        if self.routed:
            self._grow_workers()
        capacity = self.slots + cfg.max_queued_queries - self.in_flight
        job = Job(request, route, time.monotonic(), stream_id)
        refused = self.jobs.push((stream_id, route.topic), job, capacity)
        busy = f"{self.in_flight} queries running and {len(self.jobs)} waiting; try again later"
        if refused is job:
            self.reject(route, request_id, "busy", busy, stream_id)
            return
        self.counters["accepted"] += 1
        if refused is not None:  # the newest question of the longest stream/route made room for this one
            self.fail(refused, "busy", busy)

    def _route_policy(self, stream_id: str) -> Any:
        """Where replies about ``stream_id`` may go (its own reply area ``<prefix>/<id>/reply/...``)."""
        if stream_id == self.config.stream_id:
            return self._routes
        policy = self._stream_routes.get(stream_id)
        if policy is None:
            policy = dataclasses.replace(self._routes, stream_id=stream_id)
            if len(self._stream_routes) < 4096 and lookup(self.streams, stream_id) is not None:
                self._stream_routes[stream_id] = policy
        return policy

    def _allow(self, declared: str | None, route: Route | None, request_id: Any, stream_id: str) -> bool:
        """Token buckets: the declared client id, and the reply route (shared by the ids it carries)."""
        cfg = self.config
        key = client_key(declared, route)
        if key is None:
            return True
        checks = [(self._limiter, key, 1)]
        if declared is not None and route is not None:
            checks.append((self._route_limiter, f"route:{route.topic}", ROUTE_RATE_FACTOR))
        for limiter, key, factor in checks:
            if not limiter.allow(key):
                wait_s = limiter.retry_after_s(key)
                who = "this client" if factor == 1 else "this reply route"
                self.reject(route, request_id, "rate_limited",
                            f"too many requests from {who} (limit {cfg.rate_limit_per_s * factor:g}/s, burst "
                            f"{cfg.rate_limit_burst * factor}); retry in {wait_s:.1f} s", stream_id)
                return False
        return True

    def reject(self, route: Route | None, request_id: Any, code: str, message: str,
               stream_id: str | None = None) -> None:
        """Reply with an error to a request that was not queued (or count it when it has no route)."""
        self.errors[code] += 1
        if route is None:
            self.counters["unroutable"] += 1
            n = self.counters["unroutable"]
            log = logger.warning if n in (1, 10, 100) or n % 1000 == 0 else logger.debug
            log("request without a reply route dropped (%s: %s); %d so far", code, message, n)
            return
        self.counters["rejected"] += 1
        self._send(route, final_error(stream_id or self.config.stream_id, request_id, code, message))

    def fail(self, job: Job, code: str, message: str) -> None:
        """Reply with an error to an accepted job."""
        self.errors[code] += 1
        self.counters["failed"] += 1
        self._send(job.route, final_error(job.stream_id, job.request.request_id, code, message))

    def _send(self, route: Route, reply: dict[str, Any], *, is_partial: bool = False) -> None:
        self.outbox.put(OutMessage(route.topic, encode(reply), route.correlation, is_partial))

    # ------------------------------------------------------------------ answering
    async def _worker(self) -> None:
        while True:
            job = await self.jobs.get(self._blocked)
            self.in_flight += 1
            self.running[job.stream_id] += 1
            task = asyncio.ensure_future(self._answer(job))
            self._answering.add(task)
            try:
                # shielded: at shutdown, stop() decides how long a running answer may take
                await asyncio.shield(task)
            finally:
                if task.done():
                    self._answer_done(job, task)
                else:
                    task.add_done_callback(functools.partial(self._answer_done, job))

    def _answer_done(self, job: Job, task: asyncio.Task[None]) -> None:
        self._answering.discard(task)
        self.in_flight -= 1
        self.running[job.stream_id] -= 1
        if self.running[job.stream_id] <= 0:
            del self.running[job.stream_id]
        self.jobs.poke()  # its stream may take its next question now

    async def _answer(self, job: Job) -> None:
        req = job.request
        service = lookup(self.streams, job.stream_id)
        if service is None:  # removed while the question waited
            self.fail(job, "unknown_stream", f"this server has no stream {job.stream_id!r}")
            return
        try:
            if req.stream:
                answer = await asyncio.wait_for(self._ask_streaming(job, service), self.config.query_timeout_s)
            else:
                answer = await asyncio.wait_for(service.ask(req.question, req.max_new_tokens),
                                                self.config.query_timeout_s)
            reply = final_answer(job.stream_id, req.request_id, answer,
                                 (time.monotonic() - job.received_s) * 1e3, max_new_tokens_used=req.max_new_tokens,
                                 note=req.note)
            if req.stream:
                reply["partials"] = answer.extra.get("partials", 0)
            payload = encode(reply)
        except asyncio.CancelledError:
            self.fail(job, "shutting_down", self.closing or "the service is shutting down")
            raise
        except QueryError as exc:
            self.fail(job, exc.code, exc.message)
        except asyncio.TimeoutError:
            self.fail(job, "internal", f"no answer after {self.config.query_timeout_s:g} s")
        except Exception as exc:  # a session bug must cost one answer, never the service
            logger.exception("query %r failed", req.question[:80])
            self.fail(job, "internal", f"internal error ({type(exc).__name__})")
        else:
            self.counters["answered"] += 1
            self.outbox.put(OutMessage(job.route.topic, payload, job.route.correlation))

    async def _ask_streaming(self, job: Job, service: Any) -> Answer:
        req = job.request
        t0 = time.monotonic()
        ttft_ms: float | None = None
        parts: list[str] = []
        final: Answer | None = None
        stream = service.ask_stream(req.question, req.max_new_tokens)
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
