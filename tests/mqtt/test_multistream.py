"""Many streams on one MQTT connection: routing by topic, unknown ids, per-stream status, fairness across streams."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiomqtt
import pytest
from mqtt_helpers import FakeService, FakeStreams, fast_config, retained, serve, serve_streams, wait_until

from omnizip_stream.query.base import QueryError
from omnizip_stream.query.fairqueue import FairQueue
from omnizip_stream.query.mqtt import MqttQueryServer
from omnizip_stream.query.mqtt_client import MqttQueryClient


@pytest.fixture
def broker(broker, module_amqtt):
    """The shared broker; on amqtt this module's own (see ``module_amqtt``: amqtt leaks wildcard subscriptions)."""
    return module_amqtt if module_amqtt is not None else broker


pytestmark = pytest.mark.broker

STATUS_KEYS = {"state", "stream_id", "protocol", "query_topic", "instance", "status_interval_s", "ts", "server",
               "session"}


@pytest.fixture
def prefix() -> str:
    """A topic prefix of its own: the server's topics (<prefix>/server/...) are shared by every server on it."""
    return f"p{uuid.uuid4().hex[:10]}"


async def test_two_streams_are_answered_over_one_connection(broker, prefix):
    streams = FakeStreams(door=FakeService(), kitchen=FakeService())
    cfg = fast_config(broker.url, "server", topic_prefix=prefix)
    async with serve_streams(streams, cfg) as server:
        assert server.subscriptions == [f"{prefix}/+/query", f"{prefix}/server/streams"]
        async with MqttQueryClient(fast_config(broker.url, "door", topic_prefix=prefix)) as door, \
                MqttQueryClient(fast_config(broker.url, "kitchen", topic_prefix=prefix)) as kitchen:
            a, b = await asyncio.gather(door.ask("who is at the door?", timeout_s=10),
                                        kitchen.ask("is the stove on?", stream=True, timeout_s=10))
        assert server.counters["connects"] == 1
    assert (a["stream_id"], a["answer"]) == ("door", "answer: who is at the door?")
    assert (b["stream_id"], b["answer"], b["partials"]) == ("kitchen", "answer: is the stove on?", 5)
    assert [q for q, _ in streams.services["door"].calls] == ["who is at the door?"]
    assert [q for q, _ in streams.services["kitchen"].calls] == ["is the stove on?"]


async def test_an_unknown_stream_id_is_answered_unknown_stream_without_naming_the_others(broker, prefix):
    streams = FakeStreams(secretcam=FakeService())
    async with serve_streams(streams, fast_config(broker.url, "server", topic_prefix=prefix)) as server:
        async with MqttQueryClient(fast_config(broker.url, "garage", topic_prefix=prefix)) as client:
            with pytest.raises(QueryError) as info:
                await client.ask("anyone there?", timeout_s=10)
    assert info.value.code == "unknown_stream"
    assert "garage" in info.value.message and "secretcam" not in info.value.message
    assert server.errors["unknown_stream"] == 1 and streams.services["secretcam"].calls == []


async def test_each_stream_has_its_retained_status_with_the_one_stream_keys(broker, prefix):
    streams = FakeStreams(door=FakeService(), kitchen=FakeService())
    cfg = fast_config(broker.url, "server", topic_prefix=prefix)
    async with serve_streams(streams, cfg) as server:
        door = await retained(broker.port, f"{prefix}/door/status")
        kitchen = await retained(broker.port, f"{prefix}/kitchen/status")
        own = await retained(broker.port, f"{prefix}/server/status")
    for sid, status in (("door", door), ("kitchen", kitchen)):
        assert STATUS_KEYS <= set(status) and status["state"] == "online"
        assert status["stream_id"] == sid and status["query_topic"] == f"{prefix}/{sid}/query"
        assert status["instance"] == server.instance
        assert {"windows_ingested", "window_lag_s", "kv_tokens"} <= set(status["session"])
    assert own["state"] == "online" and own["streams"] == ["door", "kitchen"]
    # after shutdown: the server and every stream offline
    for topic in (f"{prefix}/server/status", f"{prefix}/door/status", f"{prefix}/kitchen/status"):
        status = await retained(broker.port, topic)
        assert (status["state"], status["reason"]) == ("offline", "shutdown")


async def test_a_flooded_stream_does_not_starve_another_streams_question(broker, prefix):
    """20 questions on one stream from 20 reply routes are queued; the other stream's question runs next but one."""
    busy, quiet = FakeService(), FakeService()
    order: list[str] = []
    gate = asyncio.Event()
    busy.gates["first"] = gate
    for service, name in ((busy, "busy"), (quiet, "quiet")):
        original = service.ask

        async def ask(question, max_new_tokens=64, _original=original, _name=name):
            order.append(f"{_name}:{question}")
            return await _original(question, max_new_tokens)

        service.ask = ask  # type: ignore[method-assign]
    streams = FakeStreams(busy=busy, quiet=quiet)
    cfg = fast_config(broker.url, "server", topic_prefix=prefix, max_concurrent_queries=1, max_queued_queries=64)
    async with serve_streams(streams, cfg) as server, aiomqtt.Client(
            "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V311) as raw:
        await raw.subscribe(f"dev/{prefix}/#", qos=1)
        send = {"question": "first", "reply_to": f"dev/{prefix}/r0", "id": "first"}
        await raw.publish(f"{prefix}/busy/query", json.dumps(send), qos=1)
        await busy.wait_for_call("first")
        for i in range(1, 21):
            body = {"question": f"flood{i}", "reply_to": f"dev/{prefix}/r{i}", "id": f"flood{i}"}
            await raw.publish(f"{prefix}/busy/query", json.dumps(body), qos=1)
        await raw.publish(f"{prefix}/quiet/query",
                          json.dumps({"question": "urgent", "reply_to": f"dev/{prefix}/quiet", "id": "urgent"}), qos=1)
        await wait_until(lambda: server.counters["accepted"] == 22)
        gate.set()
        replies = {}
        async with asyncio.timeout(20):
            async for message in raw.messages:
                if not message.topic.value.startswith(f"dev/{prefix}/"):
                    continue  # amqtt hands a gone client's subscriptions (status topics) to later clients
                reply = json.loads(message.payload)
                replies[reply["id"]] = reply
                if len(replies) == 22:
                    break
    assert all(r["ok"] for r in replies.values())
    # the quiet stream waited for the question running and at most one more of the flooded stream
    assert order.index("quiet:urgent") <= 2, order[:5]


async def test_each_stream_has_its_own_answer_slots(broker, prefix):
    """max_concurrent_queries is per stream: a long answer on one stream does not hold another stream's
    question (the model worker can then batch questions of several streams)."""
    slow, fast = FakeService(), FakeService()
    gate = asyncio.Event()
    slow.gates["long"] = gate
    streams = FakeStreams(slow=slow, fast=fast)
    cfg = fast_config(broker.url, "server", topic_prefix=prefix, max_concurrent_queries=1)
    async with serve_streams(streams, cfg) as server:
        async with MqttQueryClient(fast_config(broker.url, "slow", topic_prefix=prefix)) as a, \
                MqttQueryClient(fast_config(broker.url, "fast", topic_prefix=prefix)) as b:
            long = asyncio.ensure_future(a.ask("long", timeout_s=20))
            await slow.wait_for_call("long")
            quick = await b.ask("quick", timeout_s=10)  # answered while "long" still runs
            second = asyncio.ensure_future(a.ask("after", timeout_s=20))
            await wait_until(lambda: server.stats()["queue_depth"] == 1)  # the slow stream's own slot is taken
            assert not long.done() and [q for q, _ in slow.calls] == ["long"]
            gate.set()
            assert (await long)["answer"] == "answer: long" and (await second)["answer"] == "answer: after"
    assert quick["answer"] == "answer: quick"


def test_fair_queue_takes_streams_in_turn_and_a_flooded_stream_gives_way_when_full():
    q: FairQueue[str] = FairQueue(depth=2)
    for i in range(6):
        assert q.push(("busy", f"route{i}"), f"b{i}", capacity=6) is None
    assert q.push(("quiet", "r"), "q0", capacity=6) == "b5"  # the flooded stream's newest makes room
    assert [q.pop() for _ in range(3)] == ["b0", "q0", "b1"]
    # within one stream, the routes' rule of the one-stream server holds
    one: FairQueue[str] = FairQueue(depth=2)
    for i in range(4):
        one.push(("cam", "flood"), f"f{i}", capacity=4)
    assert one.push(("cam", "flood"), "f4", capacity=4) == "f4"
    assert one.push(("cam", "good"), "g0", capacity=4) == "f3"
    assert [one.pop() for _ in range(2)] == ["f0", "g0"]
    # a stream at its limit of running answers is skipped, the others are served
    two: FairQueue[str] = FairQueue(depth=2)
    for item, key in (("a0", ("a", "r")), ("a1", ("a", "r")), ("b0", ("b", "r"))):
        two.push(key, item, capacity=10)
    assert two.pop(blocked={"a"}) == "b0" and two.pop() == "a0"


async def test_the_one_stream_server_keeps_its_topics(broker, stream_id, service):
    cfg = fast_config(broker.url, stream_id)
    async with serve(service, cfg) as server:
        assert server.subscriptions == [f"omnizip/{stream_id}/query"] and not server.routed
        status = await retained(broker.port, cfg.status_topic)
        async with MqttQueryClient(cfg) as client:
            reply = await client.ask("still here?", timeout_s=10)
    assert STATUS_KEYS <= set(status) and status["stream_id"] == stream_id
    assert status["query_topic"] == cfg.query_topic and "streams" not in status
    assert reply["stream_id"] == stream_id and reply["answer"] == "answer: still here?"


def test_a_many_stream_server_takes_the_reserved_server_id():
    server = MqttQueryServer.for_streams(FakeStreams(a=FakeService()), fast_config("mqtt://127.0.0.1:1", "x"))
    assert server.config.stream_id == "server" and server.client_id.startswith("omnizip-server-")
    assert server.config.status_topic == "omnizip/server/status"


@pytest.mark.mosquitto
async def test_a_second_stream_server_on_the_same_prefix_is_refused(broker, prefix):
    from omnizip_stream.query.connection import StreamIdInUseError

    cfg = fast_config(broker.url, "server", topic_prefix=prefix)
    async with serve_streams(FakeStreams(a=FakeService()), cfg):
        second = MqttQueryServer.for_streams(FakeStreams(b=FakeService()), cfg)
        with pytest.raises(StreamIdInUseError, match="another stream server already runs"):
            await asyncio.wait_for(second.run(), 10)
