"""Broker restarts and server restarts: reconnect with backoff, resubscribe, no delivered request lost."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiomqtt
import pytest
from mqtt_helpers import FakeService, fast_config, serve, wait_until
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from omnizip_stream.query.mqtt_client import MqttQueryClient

pytestmark = pytest.mark.broker


def persistent_device(port: int, client_id: str) -> aiomqtt.Client:
    """A v5 device whose subscription and undelivered replies survive its disconnects (and broker restarts)."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    return aiomqtt.Client("127.0.0.1", port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5,
                          clean_start=False, properties=props)


async def test_broker_restart_mid_session(broker_factory, stream_id):
    gate = asyncio.Event()
    service = FakeService(gates={"in flight during the outage": gate})
    b = broker_factory(persistence=True)
    b.start()
    cfg = fast_config(b.url, stream_id)
    reply_topic = f"devices/{stream_id}/replies"
    device_id = f"dev-{uuid.uuid4().hex[:8]}"
    async with serve(service, cfg) as server:
        async with MqttQueryClient(cfg) as client:
            assert (await client.ask("before", timeout_s=10))["answer"] == "answer: before"

        # A question delivered to the server right before the broker goes down ...
        device = persistent_device(b.port, device_id)
        async with device:
            await device.subscribe(reply_topic, qos=1)
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = reply_topic
            props.CorrelationData = b"outage-1"
            await device.publish(cfg.query_topic, json.dumps({"question": "in flight during the outage"}),
                                 qos=1, properties=props)
            await service.wait_for_call("in flight during the outage")
            b.stop()
            # ... is answered while the broker is away (the reply waits in the server's outbox) ...
            gate.set()
            await wait_until(lambda: server.stats()["outbox_depth"] > 0)
            assert not server.connected.is_set()
            with pytest.raises(aiomqtt.MqttError):
                async with asyncio.timeout(10):
                    async for _ in device.messages:
                        pass

        b.start()
        await server.wait_connected(10)  # reconnected with backoff and resubscribed
        # ... and reaches the device after the restart (its persistent session kept the subscription).
        async with persistent_device(b.port, device_id) as device:
            async with asyncio.timeout(10):
                message = await anext(aiter(device.messages))
        assert message.properties.CorrelationData == b"outage-1"
        assert json.loads(message.payload)["answer"] == "answer: in flight during the outage"

        async with MqttQueryClient(cfg) as client:
            assert (await client.ask("after", timeout_s=10))["answer"] == "answer: after"
        assert server.counters["connects"] == 2
        assert server.counters["connect_failures"] >= 1
    assert server.stats()["outbox_depth"] == 0


@pytest.mark.mqtt5  # a persistent MQTT 5 session holds the questions for the offline server
async def test_questions_sent_while_server_is_down_are_answered_when_it_returns(broker, stream_id):
    # a pinned client id: the default one is random per server object, so its session dies with it
    cfg = fast_config(broker.url, stream_id, client_id=f"srv-{stream_id}")
    async with serve(FakeService(), cfg):
        pass  # the first run creates the server's persistent session (the broker keeps its subscription)
    service = FakeService()
    reply_topic = f"devices/{stream_id}/r"
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as device:
        await device.subscribe(reply_topic, qos=1)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.CorrelationData = b"while-down"
        # PUBACK received = the broker holds the question for the offline server session
        await device.publish(cfg.query_topic, json.dumps({"question": "asked while down"}), qos=1, properties=props)
        async with serve(service, cfg):
            async with asyncio.timeout(10):
                message = await anext(aiter(device.messages))
    assert message.properties.CorrelationData == b"while-down"
    assert json.loads(message.payload)["answer"] == "answer: asked while down"
    assert service.calls == [("asked while down", 64)]


async def test_unreachable_broker_is_retried_until_it_appears(broker_factory, stream_id):
    from omnizip_stream.query.mqtt import MqttQueryServer

    b = broker_factory()
    server = MqttQueryServer(FakeService(), fast_config(b.url, stream_id))
    task = asyncio.ensure_future(server.run())
    try:
        await wait_until(lambda: server.counters["connect_failures"] >= 2)
        b.start()
        await server.wait_connected(10)
        async with MqttQueryClient(fast_config(b.url, stream_id)) as client:
            assert (await client.ask("finally", timeout_s=10))["answer"] == "answer: finally"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
