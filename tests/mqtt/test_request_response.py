"""Request/response over a real mosquitto: MQTT 5 and 3.1.1 clients, streaming, concurrency, limits."""

from __future__ import annotations

import asyncio
import json

import aiomqtt
import pytest
from mqtt_helpers import FakeService, fast_config, serve, wait_until

from omnizip_stream.query.base import QueryError
from omnizip_stream.query.mqtt_client import MqttQueryClient

pytestmark = pytest.mark.broker

PROTOCOLS = [pytest.param("5", marks=pytest.mark.mqtt5), "3.1.1"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_ask_answers_with_metadata(broker, stream_id, service, protocol):
    async with serve(service, fast_config(broker.url, stream_id)):
        async with MqttQueryClient(fast_config(broker.url, stream_id, protocol=protocol)) as client:
            reply = await client.ask("what is on the table?", max_new_tokens=12, timeout_s=10)
    assert reply["type"] == "final" and reply["ok"] is True
    assert reply["answer"] == "answer: what is on the table?"
    assert reply["stream_id"] == stream_id
    assert reply["window_range"] == [3, 7]
    assert reply["time_range_s"] == [6.0, 16.0]
    assert reply["ttft_ms"] == 1.5 and reply["total_ms"] == 2.5
    assert reply["server_ms"] >= 0
    assert reply["tokens_generated"] == 3
    assert service.calls == [("what is on the table?", 12)]


async def test_v311_reply_echoes_payload_id(broker, stream_id, service):
    cfg = fast_config(broker.url, stream_id)
    async with serve(service, cfg), aiomqtt.Client("127.0.0.1", broker.port) as raw:
        await raw.subscribe(f"dev/{stream_id}/answers", qos=1)
        body = {"question": "hello", "reply_to": f"dev/{stream_id}/answers", "id": 42}
        await raw.publish(cfg.query_topic, json.dumps(body), qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(raw.messages))
    reply = json.loads(message.payload)
    assert reply["id"] == 42 and reply["answer"] == "answer: hello"


@pytest.mark.mqtt5
async def test_v5_reply_echoes_correlation_data(broker, stream_id, service):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    cfg = fast_config(broker.url, stream_id)
    async with serve(service, cfg), aiomqtt.Client(
        "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as raw:
        await raw.subscribe(f"dev/{stream_id}/rr", qos=1)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"dev/{stream_id}/rr"
        props.CorrelationData = b"\x00corr-1\xff"
        await raw.publish(cfg.query_topic, json.dumps({"question": "q1"}), qos=1, properties=props)
        async with asyncio.timeout(10):
            message = await anext(aiter(raw.messages))
    assert message.properties.CorrelationData == b"\x00corr-1\xff"
    assert json.loads(message.payload)["answer"] == "answer: q1"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_streamed_partials_arrive_in_order_before_final(broker, stream_id, service, protocol):
    deltas: list[str] = []
    async with serve(service, fast_config(broker.url, stream_id)):
        async with MqttQueryClient(fast_config(broker.url, stream_id, protocol=protocol)) as client:
            reply = await client.ask("where is the red cup", stream=True, on_partial=deltas.append, timeout_s=10)
    assert "".join(deltas) == "answer: where is the red cup"
    assert deltas[0] == "answer:" and len(deltas) == 6
    assert reply["answer"] == "".join(deltas) and reply["partials"] == 6


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_fifty_concurrent_queries_all_answered_and_correlated(broker, stream_id, protocol):
    service = FakeService(latency_s=0.01)
    cfg = fast_config(broker.url, stream_id, max_concurrent_queries=4, max_queued_queries=64)
    async with serve(service, cfg) as server:
        async with MqttQueryClient(fast_config(broker.url, stream_id, protocol=protocol)) as client:
            questions = [f"question number {i}" for i in range(50)]
            replies = await asyncio.gather(*(client.ask(q, timeout_s=30) for q in questions))
    assert [r["answer"] for r in replies] == [f"answer: {q}" for q in questions]
    assert sorted(q for q, _ in service.calls) == sorted(questions)
    assert server.counters["answered"] == 50
    assert client.unmatched == 0


async def test_per_client_rate_limit(broker, stream_id, service):
    cfg = fast_config(broker.url, stream_id, rate_limit_per_s=0.001, rate_limit_burst=3)
    async with serve(service, cfg) as server, MqttQueryClient(cfg) as client:
        for i in range(3):
            await client.ask(f"q{i}", client_id="dev-a", timeout_s=10)
        for i in range(2):
            with pytest.raises(QueryError) as err:
                await client.ask(f"flood{i}", client_id="dev-a", timeout_s=10)
            assert err.value.code == "rate_limited"
        # another client is not affected, and the service never saw the refused questions
        reply = await client.ask("other", client_id="dev-b", timeout_s=10)
    assert reply["answer"] == "answer: other"
    assert [q for q, _ in service.calls] == ["q0", "q1", "q2", "other"]
    assert server.errors["rate_limited"] == 2


async def test_rate_limit_identity_defaults_to_reply_topic(broker, stream_id, service):
    cfg = fast_config(broker.url, stream_id, rate_limit_per_s=0.001, rate_limit_burst=1)
    async with serve(service, cfg), MqttQueryClient(cfg) as a, MqttQueryClient(cfg) as b:
        await a.ask("a1", timeout_s=10)
        with pytest.raises(QueryError, match="too many requests"):
            await a.ask("a2", timeout_s=10)
        assert (await b.ask("b1", timeout_s=10))["answer"] == "answer: b1"


async def test_busy_when_queue_full_then_recovers(broker, stream_id):
    gate = asyncio.Event()
    service = FakeService(gates={"slow": gate})
    cfg = fast_config(broker.url, stream_id, max_concurrent_queries=1, max_queued_queries=2)
    async with serve(service, cfg) as server, MqttQueryClient(cfg) as client:
        first = asyncio.ensure_future(client.ask("slow", timeout_s=20))
        await service.wait_for_call("slow")
        queued = [asyncio.ensure_future(client.ask(f"queued{i}", timeout_s=20)) for i in range(2)]
        await wait_until(lambda: server.counters["accepted"] == 3)
        with pytest.raises(QueryError) as err:
            await client.ask("one too many", timeout_s=10)
        assert err.value.code == "busy"
        gate.set()
        replies = await asyncio.gather(first, *queued)
        assert [r["answer"] for r in replies] == ["answer: slow", "answer: queued0", "answer: queued1"]
        assert (await client.ask("after", timeout_s=10))["answer"] == "answer: after"
    assert "one too many" not in [q for q, _ in service.calls]


async def test_session_errors_become_error_replies(broker, stream_id):
    service = FakeService(fail={"long": QueryError("too_long", "question does not fit the context"),
                                "crash": RuntimeError("boom"), "full": QueryError("busy", "model busy")})
    async with serve(service, fast_config(broker.url, stream_id)) as server:
        async with MqttQueryClient(fast_config(broker.url, stream_id)) as client:
            for question, code in [("long", "too_long"), ("crash", "internal"), ("full", "busy")]:
                with pytest.raises(QueryError) as err:
                    await client.ask(question, timeout_s=10)
                assert err.value.code == code
            with pytest.raises(QueryError) as err:
                await client.ask("crash", stream=True, timeout_s=10)
            assert err.value.code == "internal" and "boom" not in err.value.message
            assert (await client.ask("fine", timeout_s=10))["answer"] == "answer: fine"
    assert server.counters["failed"] == 4


async def test_query_timeout_gives_internal_error(broker, stream_id):
    service = FakeService(gates={"stuck": asyncio.Event()})
    cfg = fast_config(broker.url, stream_id, query_timeout_s=0.2)
    async with serve(service, cfg), MqttQueryClient(cfg) as client:
        with pytest.raises(QueryError, match="no answer after") as err:
            await client.ask("stuck", timeout_s=10)
        assert err.value.code == "internal"
        assert (await client.ask("next", timeout_s=10))["answer"] == "answer: next"


async def test_a_broken_session_result_costs_one_answer_not_the_service(broker, stream_id, service):
    class Broken(FakeService):
        async def ask(self, question, max_new_tokens=64):
            if question == "bad":
                return "not an Answer"
            return await super().ask(question, max_new_tokens)

    broken = Broken()
    async with serve(broken, fast_config(broker.url, stream_id)), MqttQueryClient(
        fast_config(broker.url, stream_id)
    ) as client:
        with pytest.raises(QueryError) as err:
            await client.ask("bad", timeout_s=10)
        assert err.value.code == "internal"
        assert (await client.ask("good", timeout_s=10))["answer"] == "answer: good"


async def test_shutdown_answers_running_and_queued_questions_with_shutting_down(broker, stream_id):
    service = FakeService(gates={"slow": asyncio.Event()})
    cfg = fast_config(broker.url, stream_id, max_concurrent_queries=1)
    async with MqttQueryClient(cfg) as client:
        async with serve(service, cfg) as server:
            running = asyncio.ensure_future(client.ask("slow", timeout_s=10))
            await service.wait_for_call("slow")
            queued = asyncio.ensure_future(client.ask("waiting", timeout_s=10))
            await wait_until(lambda: server.counters["accepted"] == 2)
        for fut in (running, queued):
            with pytest.raises(QueryError) as err:
                await fut
            assert err.value.code == "shutting_down" and "shutting down" in err.value.message
