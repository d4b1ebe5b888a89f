"""Reply routes: only well-formed topic names, confined away from the service's topics, salvaged when possible.

A reply route is requester input that the server publishes to. A malformed one must never reach the
broker (mosquitto drops the whole connection for it), and a well-formed one must never point into the
service's own namespace, ``$`` topics or, with ``reply_prefix``, anywhere outside the allowed prefix.
"""

from __future__ import annotations

import asyncio
import json

import aiomqtt
import pytest
from mqtt_helpers import fast_config, serve
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from omnizip_stream.query.mqtt_client import MqttQueryClient
from omnizip_stream.query.routes import RoutePolicy, salvage_fields, topic_name_problem

# ------------------------------------------------------------------ topic names (no broker)

BAD_TOPIC_NAMES = {
    "soh": "dev/\u0001/r",
    "bell": "dev/\u0007",
    "del": "dev/\u007f",
    "nel_c1": "dev/\u0085",
    "nul": "dev/\x00",
    "noncharacter_fdd0": "dev/\ufdd0",
    "noncharacter_ffff": "dev/\uffff",
    "noncharacter_plane1": "dev/\U0001fffe",
    "lone_surrogate": "x/\ud800",
    "plus": "dev/+/r",
    "hash": "dev/#",
    "empty": "",
}


@pytest.mark.parametrize("name", list(BAD_TOPIC_NAMES))
def test_malformed_topic_names_are_refused(name):
    assert topic_name_problem(BAD_TOPIC_NAMES[name]) is not None


def test_well_formed_topic_names_pass_and_length_is_in_utf8_bytes():
    for ok in ("dev/r", "a", "/leading/slash", "Gerät/Antwort/é", "emoji/\U0001f600", "spaces are fine", "\ufffd"):
        assert topic_name_problem(ok) is None, ok
    assert topic_name_problem("é" * 256, 512) is None
    assert "513 bytes" in topic_name_problem("é" * 256 + "x", 512)
    assert topic_name_problem("x" * 65535) is None
    assert topic_name_problem("x" * 65536) is not None


@pytest.mark.parametrize("topic", [
    "$SYS/broker/x", "$share/g/t", "omnizip/cam1/query", "omnizip/cam1/query/", "omnizip/cam2/status",
    "omnizip/cam2/query", "omnizip/cam1/status", "omnizip/cam1/alerts", "omnizip/cam1/watch/x", "omnizip",
    "omnizip/cam1/reply/", "omnizip/cam2/reply/dev", "omnizip/cam1/replyx/dev",
])
def test_confinement_keeps_replies_out_of_the_service_namespace(topic):
    assert RoutePolicy("omnizip", "cam1").problem(topic) is not None


def test_confinement_allows_own_reply_area_and_other_trees():
    policy = RoutePolicy("omnizip", "cam1")
    for ok in ("omnizip/cam1/reply/dev7", "omnizip/cam1/reply/dev7/x", "devices/door/replies", "omnizipx/a",
               "home/frontdoor/lock/set"):
        assert policy.problem(ok) is None, ok


def test_reply_prefix_confines_to_its_subtree_and_is_validated():
    policy = RoutePolicy("omnizip", "cam1", reply_prefix="devices/")
    assert policy.problem("devices/door/r") is None
    assert "outside the allowed reply prefix devices/" in policy.problem("home/frontdoor/lock/set")
    assert policy.problem("devicesX/r") is not None and policy.problem("devices") is not None
    assert RoutePolicy("omnizip", "cam1", reply_prefix="devices").problem("devices/a") is None
    assert RoutePolicy("omnizip", "cam1", reply_prefix="omnizip/cam1/reply/").problem("omnizip/cam1/reply/d") is None
    for bad in ("$SYS/", "a/+/", "omnizip/", "omnizip/cam2/reply/", "x/\u0001"):
        with pytest.raises(ValueError, match="reply_prefix"):
            RoutePolicy("omnizip", "cam1", reply_prefix=bad)


def test_config_reply_prefix_and_topic_limit():
    from omnizip_stream.query.mqtt_config import MqttConfig

    cfg = MqttConfig(stream_id="cam1", reply_prefix="devices/", max_reply_topic_bytes=64)
    assert cfg.route_policy().problem("devices/" + "x" * 60) is not None
    with pytest.raises(ValueError, match="reply_prefix"):
        MqttConfig(stream_id="cam1", reply_prefix="omnizip/cam1/status")
    with pytest.raises(ValueError, match="max_reply_topic_bytes"):
        MqttConfig(stream_id="cam1", max_reply_topic_bytes=70000)


# ------------------------------------------------------------------ salvage (no broker)

@pytest.mark.parametrize(("payload", "expected"), [
    (b'{"question": "hi", "reply_to": "dev/r", "id": 7', {"reply_to": "dev/r", "id": 7}),  # truncated
    (b'{"reply_to": "dev/r", "id": "a", "question": "unterminated', {"reply_to": "dev/r", "id": "a"}),
    (b'{"question": "' + b"y" * 300_000 + b'", "reply_to": "dev/r"}', {"reply_to": "dev/r"}),  # oversize
    (b'{"reply_to": "dev/\\u00e9"} trailing junk', {"reply_to": "dev/\u00e9"}),
    (b'{"question": "say \\"reply_to\\": \\"evil/t\\"", "max_new_tokens": NaN, "reply_to": "late"}', {}),
    (b'{"question": "hi", "max_new_tokens": 1e999x, "reply_to": "after/damage"}', {}),
    (b'["reply_to", "dev/r"]', {}),
    (b'{"nested": {"reply_to": "inner/t"}, "reply_to": "outer/t"}', {"reply_to": "outer/t"}),
    (b'{"id": ' + b"[" * 100_000, {}),
    (b"\xff\xfe", {}),
])
def test_salvage_takes_only_complete_top_level_members_before_the_damage(payload, expected):
    assert salvage_fields(payload) == expected


def test_salvaged_non_utf8_route_is_never_usable():
    fields = salvage_fields(b'{"reply_to": "dev/\xff"')
    assert RoutePolicy().problem(fields["reply_to"]) is not None


# ------------------------------------------------------------------ through mosquitto

def _props(response_topic: str, correlation: bytes) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation
    return props


# mosquitto itself refuses a PUBLISH whose ResponseTopic property is malformed UTF-8 (so those arrive only
# through the 3.1.1 reply_to, or from brokers that do not check properties: see the stub test below).
BAD_RESPONSE_TOPICS = ["dev/+/r", "$SYS/x", "omnizip/{other}/status", "omnizip/{other}/query", "omnizip/{sid}/query",
                       "omnizip/{sid}/query/", "omnizip/{sid}/status", "omnizip/{other}/reply/x"]



@pytest.mark.broker
@pytest.mark.mqtt5
async def test_v5_malformed_or_confined_response_topics_never_silence_the_service(broker, stream_id, service):
    cfg = fast_config(broker.url, stream_id)
    topics = [t.format(sid=stream_id, other=stream_id + "x") for t in BAD_RESPONSE_TOPICS]
    async with serve(service, cfg) as server, MqttQueryClient(cfg) as client:
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as raw:
            for i, topic in enumerate(topics):
                await raw.publish(cfg.query_topic, json.dumps({"question": f"bad {i}"}), qos=1,
                                  properties=_props(topic, b"c%d" % i))
        # one publisher's messages arrive in order: after this answer every bad one was handled
        assert (await client.ask("still answering?", timeout_s=10))["answer"] == "answer: still answering?"
        assert server.counters["connects"] == 1  # the broker never dropped the server
        assert server.counters["unroutable"] == len(topics)
        assert server.errors["bad_request"] == len(topics)
    assert [q for q, _ in service.calls] == ["still answering?"]


@pytest.mark.broker
@pytest.mark.parametrize("reply_to", ["x/\ud800", "dev/\u0001", "dev/\u0007", "dev/\u0085", "dev/\uffff",
                                      "dev/\ufdd0", "omnizip/{sid}/status", "omnizip/{sid}/query/", "#", "$SYS/a"])
async def test_v311_bad_reply_to_is_unroutable_and_the_service_goes_on(broker, stream_id, service, reply_to):
    cfg = fast_config(broker.url, stream_id, protocol="3.1.1")
    body = json.dumps({"question": "q", "reply_to": reply_to.format(sid=stream_id), "id": 1})  # \ud800 escaped
    async with serve(service, cfg) as server, MqttQueryClient(cfg) as client:
        async with aiomqtt.Client("127.0.0.1", broker.port) as raw:
            await raw.publish(cfg.query_topic, body, qos=1)
        assert (await client.ask("next", timeout_s=10))["answer"] == "answer: next"
        assert server.counters["unroutable"] == 1 and server.counters["connects"] == 1
    assert [q for q, _ in service.calls] == ["next"]


@pytest.mark.parametrize("topic", ["dev/\u0001/r", "dev/\u0085", "dev/\uffff", "x/\ud800", "d/" + "x" * 600])
async def test_malformed_response_topic_from_a_lax_broker_queues_nothing(topic):
    """Brokers that do not check properties pass such a ResponseTopic on: nothing may reach the outbox."""
    from types import SimpleNamespace

    from mqtt_helpers import FakeService

    from omnizip_stream.query.mqtt import MqttConfig, MqttQueryServer

    server = MqttQueryServer(FakeService(), MqttConfig(stream_id="cam1"))
    message = SimpleNamespace(retain=False, payload=json.dumps({"question": "q"}).encode(),
                              properties=SimpleNamespace(ResponseTopic=topic, CorrelationData=b"c"))
    server._desk.on_message(message)
    stats = server.stats()
    assert stats["outbox_depth"] == 0 and stats["queue_depth"] == 0
    assert stats["unroutable"] == 1 and stats["errors"] == {"bad_request": 1}


@pytest.mark.broker
@pytest.mark.mqtt5
async def test_reply_prefix_refuses_routes_outside_it_and_nothing_is_published_there(broker, stream_id, service):
    cfg = fast_config(broker.url, stream_id, reply_prefix=f"devices/{stream_id}/")
    lock = f"home/{stream_id}/frontdoor/lock/set"
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as raw:
        await raw.subscribe(lock, qos=1)
        await raw.subscribe(f"devices/{stream_id}/r", qos=1)
        async with serve(service, cfg) as server:
            await raw.publish(cfg.query_topic, json.dumps({"question": "unlock"}), qos=1,
                              properties=_props(lock, b"1"))
            await raw.publish(cfg.query_topic, json.dumps({"question": "allowed"}), qos=1,
                              properties=_props(f"devices/{stream_id}/r", b"2"))
            async with asyncio.timeout(10):
                message = await anext(aiter(raw.messages))
        assert message.topic.value == f"devices/{stream_id}/r"
        assert json.loads(message.payload)["answer"] == "answer: allowed"
        assert server.counters["unroutable"] == 1
    assert [q for q, _ in service.calls] == ["allowed"]


@pytest.mark.broker
async def test_own_reply_area_still_works_for_the_bundled_client(broker, stream_id, service):
    cfg = fast_config(broker.url, stream_id, reply_prefix=f"omnizip/{stream_id}/reply/")
    async with serve(service, cfg), MqttQueryClient(cfg) as client:
        assert (await client.ask("hello", timeout_s=10))["answer"] == "answer: hello"


# ------------------------------------------------------------------ salvaged routes and payload checks

@pytest.mark.broker
@pytest.mark.parametrize(("kind", "code"), [("not_json", "bad_request"), ("oversize", "too_long"),
                                             ("surrogate_question", "bad_request")])
async def test_v311_error_reaches_a_recoverable_reply_to(broker, stream_id, service, kind, code):
    cfg = fast_config(broker.url, stream_id, protocol="3.1.1")  # max_payload_bytes 16 KiB
    reply_topic = f"dev/{stream_id}/r"
    head = json.dumps({"reply_to": reply_topic, "id": "k-1"})[:-1]
    payload = {
        "not_json": head.encode() + b', "question": "unterminated',
        "oversize": b'{"question": "' + b"z" * 300_000 + b'", ' + head[1:].encode() + b"}",  # > 16 x limit
        "surrogate_question": head.encode() + b', "question": "what is \\ud800?"}',
    }[kind]
    async with serve(service, cfg) as server, MqttQueryClient(cfg) as client:
        async with aiomqtt.Client("127.0.0.1", broker.port) as raw:
            await raw.subscribe(reply_topic, qos=1)
            await raw.publish(cfg.query_topic, payload, qos=1)
            async with asyncio.timeout(10):
                reply = json.loads((await anext(aiter(raw.messages))).payload)
        assert reply["ok"] is False and reply["id"] == "k-1" and reply["error"]["code"] == code, reply
        assert (await client.ask("next", timeout_s=10))["answer"] == "answer: next"
        assert server.counters["unroutable"] == 0
    assert [q for q, _ in service.calls] == ["next"]


@pytest.mark.broker
@pytest.mark.parametrize("stream", [False, True])
async def test_max_new_tokens_above_the_limit_is_answered_with_the_limit(broker, stream_id, service, stream):
    cfg = fast_config(broker.url, stream_id, max_new_tokens_limit=32, default_max_new_tokens=8)
    async with serve(service, cfg), MqttQueryClient(cfg) as client:
        reply = await client.ask("long answer please", max_new_tokens=100_000, stream=stream, timeout_s=10)
        normal = await client.ask("short", max_new_tokens=5, timeout_s=10)
    assert reply["ok"] is True and reply["max_new_tokens_used"] == 32
    assert "100000" in reply["note"] and "32" in reply["note"]
    assert normal["max_new_tokens_used"] == 5 and "note" not in normal
    assert service.calls == [("long answer please", 32), ("short", 5)]
