"""Helpers of the reliability tests: raw devices, status readers, reply injection."""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from omnizip_stream.query.jobs import ForwardingQueue
from omnizip_stream.query.outbox import OutMessage


def device(port: int, client_id: str | None = None, *, persistent: bool = False, timeout_s: float = 10.0,
           inbox: asyncio.Queue[Any] | None = None) -> aiomqtt.Client:
    """An MQTT 5 device; ``persistent`` keeps its subscriptions and queued replies across disconnects.

    With ``inbox``, received messages go there instead of the client's own queue (which dies with
    the client object, so messages acknowledged but not yet read would be lost).
    """
    kwargs: dict[str, Any] = {"timeout": timeout_s}
    if inbox is not None:
        kwargs["queue_type"] = functools.partial(ForwardingQueue, inbox)
    if persistent:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        kwargs.update(clean_start=False, properties=props)
    return aiomqtt.Client("127.0.0.1", port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5, **kwargs)


def request_props(reply_topic: str, correlation: bytes) -> Properties:
    """MQTT 5 request properties: where to answer, and what to echo."""
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply_topic
    props.CorrelationData = correlation
    return props


def inject_reply(server: Any, topic: str, payload: bytes = b'{"type":"final","ok":true}') -> None:
    """Queue a reply for ``topic`` in the server's outbox, as if a request had passed validation."""
    server._outbox.put(OutMessage(topic, payload))


async def statuses(port: int, topic: str, out: list[dict[str, Any]], ready: asyncio.Event) -> None:
    """Append every status message on ``topic`` to ``out`` (run as a task; ``ready`` once subscribed)."""
    async with device(port) as client:
        await client.subscribe(topic, qos=1)
        ready.set()
        async for message in client.messages:
            out.append(json.loads(message.payload))


async def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    """Poll ``predicate()`` until true."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
