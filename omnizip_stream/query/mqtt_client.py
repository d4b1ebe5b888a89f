"""A small MQTT query client: what an IoT device does to ask a stream a question.

Used by ``scripts/mqtt_query.py``, the tests and the latency benchmark.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omnizip_stream.query.base import QueryError
from omnizip_stream.query.connection import make_client, permanent_reason
from omnizip_stream.query.mqtt_config import MqttConfig

logger = logging.getLogger(__name__)

PartialCallback = Callable[[str], None]


@dataclass
class _Pending:
    future: asyncio.Future[dict[str, Any]]
    on_partial: PartialCallback | None
    next_seq: int = 0
    partials: list[str] = field(default_factory=list)


class MqttQueryClient:
    """Connects to the broker, sends questions to ``<prefix>/<stream_id>/query`` and matches replies.

    Replies arrive on ``<prefix>/<stream_id>/reply/<client_id>``. Under MQTT 5 they are matched by
    CorrelationData (set on every request); under 3.1.1 by the ``id`` the client puts in the payload
    next to ``reply_to``. Many requests may be outstanding at once.

    Args:
        config: broker address, credentials, TLS, ``stream_id`` and ``protocol`` (``config.client_id``,
            if set, is used as this client's id; otherwise a random one is made).

    Example::

        async with MqttQueryClient(MqttConfig.from_url(url, stream_id="cam1")) as client:
            reply = await client.ask("What is on the table?")
            print(reply["answer"])
    """

    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        self.client_id = config.client_id or f"omnizip-q-{uuid.uuid4().hex[:12]}"
        self.reply_topic = config.reply_topic(self.client_id)
        self.v5 = config.protocol == "5"
        self._client: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[Any, _Pending] = {}
        self._status: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.unmatched = 0

    async def __aenter__(self) -> MqttQueryClient:
        """Connect and subscribe to the reply topic.

        Raises:
            ConnectionError: one line saying why the broker could not be reached or refused us.
        """
        import aiomqtt

        cfg = self.config
        self._client = make_client(cfg, self.client_id, persistent=False)
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise ConnectionError(f"cannot connect to {cfg.url}: {permanent_reason(exc, cfg) or exc}") from None
        try:
            await self._client.subscribe(self.reply_topic, qos=cfg.qos)
        except BaseException:
            await self._client.__aexit__(None, None, None)
            raise
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Disconnect; outstanding requests fail with ``ConnectionError``."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._fail_all(ConnectionError("client closed"))
        if self._client is not None:
            try:
                await self._client.__aexit__(None, None, None)
            except Exception as err:  # already disconnected
                logger.debug("disconnect: %s", err)

    async def ask(
        self,
        question: str,
        *,
        max_new_tokens: int | None = None,
        stream: bool = False,
        timeout_s: float = 60.0,
        on_partial: PartialCallback | None = None,
        client_id: str | None = None,
    ) -> dict[str, Any]:
        """Ask one question and wait for the final reply.

        Args:
            question: the question text.
            max_new_tokens: generation budget (server default when None).
            stream: ask for partial answers; each delta is passed to ``on_partial`` in order.
            timeout_s: seconds to wait for the final reply.
            on_partial: called with each text delta of a streamed answer.
            client_id: identity for the server's rate limit (default: this client's reply topic).

        Returns:
            The final reply dict (``answer``, ``ttft_ms``, ``total_ms``, ``window_range`` ...).

        Raises:
            QueryError: the server answered with an error (its ``code`` and ``message``).
            TimeoutError: no final reply within ``timeout_s``.
        """
        body: dict[str, Any] = {"question": question}
        if max_new_tokens is not None:
            body["max_new_tokens"] = max_new_tokens
        if stream:
            body["stream"] = True
        if client_id is not None:
            body["client_id"] = client_id
        reply = await self.request(body, timeout_s=timeout_s, on_partial=on_partial)
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise QueryError(str(err.get("code", "internal")), str(err.get("message", "unknown error")))
        return reply

    async def request(
        self,
        payload: dict[str, Any] | bytes,
        *,
        timeout_s: float = 60.0,
        on_partial: PartialCallback | None = None,
        request_id: str | None = None,
        topic: str | None = None,
    ) -> dict[str, Any]:
        """Send a raw request and return the final reply, whether ``ok`` or an error.

        Args:
            payload: a request dict (``reply_to``/``id`` are added under 3.1.1 unless present) or raw
                bytes (sent as they are; under 3.1.1 ``request_id`` must then name the ``id`` the
                bytes carry, or the reply cannot be matched).
            timeout_s: seconds to wait for the final reply.
            on_partial: called with each text delta of a streamed answer.
            request_id: see ``payload``.
            topic: where to publish (default: the stream's query topic; e.g. a many-stream server's
                ``<prefix>/server/streams`` for stream control).

        Raises:
            TimeoutError: no final reply within ``timeout_s``.
            ValueError: raw bytes under 3.1.1 without ``request_id``.
        """
        cfg = self.config
        properties = None
        if self.v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            correlation = uuid.uuid4().bytes
            key: Any = ("corr", correlation)
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = self.reply_topic
            properties.CorrelationData = correlation
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        elif isinstance(payload, bytes):
            if request_id is None:
                raise ValueError("raw payloads over MQTT 3.1.1 need request_id to match the reply")
            key, data = ("id", request_id), payload
        else:
            body = dict(payload)
            body.setdefault("reply_to", self.reply_topic)
            body.setdefault("id", uuid.uuid4().hex)
            key, data = ("id", body["id"]), json.dumps(body).encode()
        pending = _Pending(asyncio.get_running_loop().create_future(), on_partial)
        self._pending[key] = pending
        try:
            await self._client.publish(topic or cfg.query_topic, data, qos=cfg.qos, properties=properties)
            try:
                return await asyncio.wait_for(asyncio.shield(pending.future), timeout_s)
            except asyncio.TimeoutError:
                raise TimeoutError(f"no reply from stream {cfg.stream_id!r} within {timeout_s:g} s") from None
        finally:
            self._pending.pop(key, None)

    async def status(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """Read the stream's retained status message (``state`` online/offline plus counters).

        Raises:
            TimeoutError: nothing retained on the status topic within ``timeout_s``.
        """
        while not self._status.empty():
            self._status.get_nowait()
        await self._client.subscribe(self.config.status_topic, qos=self.config.qos)
        try:
            return await asyncio.wait_for(self._status.get(), timeout_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no status on {self.config.status_topic} within {timeout_s:g} s") from None
        finally:
            await self._client.unsubscribe(self.config.status_topic)

    async def _read(self) -> None:
        try:
            async for message in self._client.messages:
                self._dispatch(message)
        except Exception as exc:  # connection lost
            self._fail_all(ConnectionError(f"connection to {self.config.url} lost: {exc}"))

    def _dispatch(self, message: Any) -> None:
        try:
            reply = json.loads(message.payload)
        except (ValueError, TypeError):
            self.unmatched += 1
            return
        if message.topic.value == self.config.status_topic:
            if isinstance(reply, dict):
                self._status.put_nowait(reply)
            return
        if not isinstance(reply, dict):
            self.unmatched += 1
            return
        props = message.properties
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        key = ("corr", bytes(correlation)) if correlation is not None else ("id", reply.get("id"))
        pending = self._pending.get(key)
        if pending is None or pending.future.done():
            self.unmatched += 1  # a late or duplicate reply
            return
        if reply.get("type") == "partial":
            seq, delta = reply.get("seq"), reply.get("delta")
            if isinstance(seq, int) and seq == pending.next_seq and isinstance(delta, str):
                pending.next_seq += 1
                pending.partials.append(delta)
                if pending.on_partial is not None:
                    pending.on_partial(delta)
            return
        pending.future.set_result(reply)

    def _fail_all(self, exc: Exception) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(exc)
