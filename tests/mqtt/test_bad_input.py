"""Bad input never stops the service: every refusal is an error reply (or a counted drop) and the next
request is still answered."""

from __future__ import annotations

import json

import aiomqtt
import pytest
from mqtt_helpers import fast_config, serve

from omnizip_stream.query.mqtt_client import MqttQueryClient

pytestmark = pytest.mark.broker

MAX_PAYLOAD = 1024
MAX_CHARS = 200

BAD_PAYLOADS = {
    "malformed_json": (b'{"question": "hi"', "bad_request", "not valid JSON"),
    "not_utf8": (b"\xff\xfe\x00q", "bad_request", "not UTF-8"),
    "json_array": (b'["question", "hi"]', "bad_request", "JSON object"),
    "json_string": (b'"what is this"', "bad_request", "JSON object"),
    "json_null": (b"null", "bad_request", "JSON object"),
    "empty_payload": (b"", "bad_request", "not valid JSON"),
    "nan_constant": (b'{"question": "hi", "max_new_tokens": NaN}', "bad_request", "not valid JSON"),
    "missing_question": (b'{"max_new_tokens": 5}', "bad_request", "missing required field"),
    "question_not_string": (b'{"question": 5}', "bad_request", "'question' must be a string"),
    "question_empty": (b'{"question": "   "}', "bad_request", "empty"),
    "question_too_long": (json.dumps({"question": "x" * (MAX_CHARS + 1)}).encode(), "too_long", "limit 200"),
    "payload_too_large": (json.dumps({"question": "y" * 2000}).encode(), "too_long", "limit 1024"),
    "max_tokens_string": (b'{"question": "hi", "max_new_tokens": "ten"}', "bad_request", "integer"),
    "max_tokens_bool": (b'{"question": "hi", "max_new_tokens": true}', "bad_request", "integer"),
    "max_tokens_float": (b'{"question": "hi", "max_new_tokens": 2.5}', "bad_request", "integer"),
    "max_tokens_zero": (b'{"question": "hi", "max_new_tokens": 0}', "bad_request", "1..32"),
    "stream_not_bool": (b'{"question": "hi", "stream": "yes"}', "bad_request", "'stream'"),
    "unknown_field": (b'{"question": "hi", "temperature": 2}', "bad_request", "unknown field"),
    "id_object": (b'{"question": "hi", "id": {"a": 1}}', "bad_request", "'id'"),
    "client_id_bad": (b'{"question": "hi", "client_id": "a/b#"}', "bad_request", "'client_id'"),
    "reply_to_wildcard": (b'{"question": "hi", "reply_to": "a/+/b"}', "bad_request", "wildcards"),
    "huge_nested_payload": (b'{"question": "hi", "id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too_long", "bytes"),
}


def _config(url, stream_id, **kw):
    return fast_config(url, stream_id, max_payload_bytes=MAX_PAYLOAD, max_question_chars=MAX_CHARS,
                       max_new_tokens_limit=32, default_max_new_tokens=8, **kw)


@pytest.mark.mqtt5
@pytest.mark.parametrize("name", list(BAD_PAYLOADS))
async def test_v5_bad_payload_gets_error_reply_and_service_continues(broker, stream_id, service, name):
    payload, code, fragment = BAD_PAYLOADS[name]
    cfg = _config(broker.url, stream_id)
    async with serve(service, cfg) as server, MqttQueryClient(cfg) as client:
        reply = await client.request(payload, timeout_s=10)
        assert reply["type"] == "final" and reply["ok"] is False
        assert reply["error"]["code"] == code, reply
        assert fragment in reply["error"]["message"]
        good = await client.ask("still there?", timeout_s=10)
    assert good["answer"] == "answer: still there?"
    assert service.calls == [("still there?", 8)]
    assert server.errors[code] == 1


@pytest.mark.parametrize("name", ["unknown_field", "question_too_long", "max_tokens_zero", "payload_too_large"])
async def test_v311_invalid_request_error_goes_to_reply_to_with_id(broker, stream_id, service, name):
    payload, code, _ = BAD_PAYLOADS[name]
    body = json.loads(payload)
    body.update(reply_to=f"dev/{stream_id}/r", id="req-7")
    cfg = _config(broker.url, stream_id, protocol="3.1.1")
    async with serve(service, cfg), MqttQueryClient(cfg) as client:
        async with aiomqtt.Client("127.0.0.1", broker.port) as raw:
            await raw.subscribe(f"dev/{stream_id}/r", qos=1)
            await raw.publish(cfg.query_topic, json.dumps(body), qos=1)
            reply = json.loads((await anext(aiter(raw.messages))).payload)
        assert reply["id"] == "req-7" and reply["error"]["code"] == code
        assert (await client.ask("next", timeout_s=10))["answer"] == "answer: next"


async def test_requests_without_reply_route_are_counted_and_dropped(broker, stream_id, service):
    cfg = _config(broker.url, stream_id)
    async with serve(service, cfg) as server, MqttQueryClient(cfg) as client:
        async with aiomqtt.Client("127.0.0.1", broker.port) as raw:  # 3.1.1: no ResponseTopic
            await raw.publish(cfg.query_topic, b"{broken", qos=1)
            await raw.publish(cfg.query_topic, json.dumps({"question": "nobody listens"}), qos=1)
            await raw.publish(cfg.query_topic, json.dumps({"question": "q", "reply_to": cfg.status_topic}), qos=1)
            await raw.publish(cfg.query_topic, json.dumps({"question": "q", "reply_to": cfg.query_topic}), qos=1)
        # Messages of one publisher reach the server in order, so after the next answer all four were seen.
        assert (await client.ask("next", timeout_s=10))["answer"] == "answer: next"
    assert server.counters["unroutable"] == 4
    assert [q for q, _ in service.calls] == ["next"]


@pytest.mark.mqtt5
async def test_v5_response_topic_pointing_at_the_service_is_refused(broker, stream_id, service):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    cfg = _config(broker.url, stream_id)
    async with serve(service, cfg) as server, MqttQueryClient(cfg) as client:
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as raw:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = cfg.query_topic  # would loop replies back into the query topic
            await raw.publish(cfg.query_topic, json.dumps({"question": "loop"}), qos=1, properties=props)
        assert (await client.ask("next", timeout_s=10))["answer"] == "answer: next"
    assert server.counters["unroutable"] == 1
    assert server.counters["received"] == 2


async def test_retained_questions_are_ignored(broker, stream_id, service):
    cfg = _config(broker.url, stream_id)
    async with aiomqtt.Client("127.0.0.1", broker.port) as raw:
        body = {"question": "stale", "reply_to": f"dev/{stream_id}/r"}
        await raw.publish(cfg.query_topic, json.dumps(body), qos=1, retain=True)
    try:
        async with serve(service, cfg) as server, MqttQueryClient(cfg) as client:
            assert (await client.ask("live", timeout_s=10))["answer"] == "answer: live"
        assert server.counters["ignored_retained"] == 1
        assert [q for q, _ in service.calls] == ["live"]
    finally:
        async with aiomqtt.Client("127.0.0.1", broker.port) as raw:
            await raw.publish(cfg.query_topic, b"", qos=1, retain=True)  # clear the retained message
