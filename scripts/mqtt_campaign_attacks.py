"""What scripts/mqtt_campaign.py throws at the server: bad inputs, floods and faults (each returns a result dict)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from mqtt_campaign_harness import Harness, client, logger, poll_until, props

from omnizip_stream.query.base import QueryError
from omnizip_stream.query.mqtt import MqttQueryServer
from omnizip_stream.query.mqtt_client import MqttQueryClient


# ------------------------------------------------------------------ bad inputs
def bad_inputs(h: Harness) -> list[tuple[str, str, bytes, str | None, str]]:
    """``(name, protocol, payload, v5 ResponseTopic, expected)``; expected is an error code, ``unroutable``,
    ``answer`` (accepted, e.g. capped) or ``ignored``. 3.1.1 inputs carry their route in the payload."""
    sid, r5, r3 = h.stream_id, f"{h.reply_root}/r5", f"{h.reply_root}/r3"

    def q(**extra: Any) -> bytes:
        return json.dumps({"question": "hi", **extra}).encode()

    v5_payloads = {
        "malformed_json": (b'{"question": "hi"', "bad_request"), "not_utf8": (b"\xff\xfe\x00q", "bad_request"),
        "json_array": (b'["question"]', "bad_request"), "json_string": (b'"what"', "bad_request"),
        "json_null": (b"null", "bad_request"), "empty_payload": (b"", "bad_request"),
        "nan_constant": (b'{"question": "hi", "max_new_tokens": NaN}', "bad_request"),
        "missing_question": (b'{"max_new_tokens": 5}', "bad_request"),
        "question_not_string": (b'{"question": 5}', "bad_request"),
        "question_empty": (b'{"question": "  "}', "bad_request"),
        "question_too_long": (json.dumps({"question": "x" * 201}).encode(), "too_long"),
        "question_lone_surrogate": (b'{"question": "what is \\ud800?"}', "bad_request"),
        "question_control_chars": (b'{"question": "a\\u0001b\\u0007c\\u0085"}', "answer"),
        "payload_too_large": (json.dumps({"question": "y" * 20_000}).encode(), "too_long"),
        "payload_300kb": (json.dumps({"question": "y" * 300_000}).encode(), "too_long"),
        "deep_nesting": (b'{"question": "hi", "id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too_long"),
        "deep_nesting_small": (b'{"question": "hi", "id": ' + b"[" * 5000 + b"]" * 5000 + b"}", "bad_request"),
        "max_tokens_string": (q(max_new_tokens="ten"), "bad_request"),
        "max_tokens_bool": (q(max_new_tokens=True), "bad_request"),
        "max_tokens_float": (q(max_new_tokens=2.5), "bad_request"),
        "max_tokens_zero": (q(max_new_tokens=0), "bad_request"),
        "max_tokens_huge": (q(max_new_tokens=10**9), "answer"),
        "stream_not_bool": (q(stream="yes"), "bad_request"), "unknown_field": (q(temperature=2), "bad_request"),
        "id_object": (q(id={"a": 1}), "bad_request"), "client_id_bad": (q(client_id="a/b#"), "bad_request"),
        "reply_to_wildcard_in_payload": (q(reply_to="a/+/b"), "bad_request"),
    }
    out = [(f"v5_{k}", "5", p, r5, e) for k, (p, e) in v5_payloads.items()]
    v5_routes = {"dollar": "$SYS/x", "own_query": f"omnizip/{sid}/query", "own_status": f"omnizip/{sid}/status",
                 "own_query_slash": f"omnizip/{sid}/query/", "other_status": "omnizip/cam2/status",
                 "other_query": "omnizip/cam2/query", "own_alerts": f"omnizip/{sid}/alerts",
                 "other_reply_area": "omnizip/cam2/reply/x", "plus": "dev/+/r", "hash": "dev/#",
                 "long_600_bytes": "d/" + "x" * 600}
    out += [(f"v5_route_{k}", "5", q(), t, "unroutable") for k, t in v5_routes.items()]
    v311_routes = {"soh": "d/\u0001", "bell": "d/\u0007", "nel": "d/\u0085", "del": "d/\u007f", "nul": "d/\x00",
                   "uffff": "d/\uffff", "ufdd0": "d/\ufdd0", "u1fffe": "d/\U0001fffe", "lone_surrogate": "x/\ud800",
                   "plus": "d/+", "hash": "#", "dollar": "$SYS/x", "own_status": f"omnizip/{sid}/status",
                   "own_query_slash": f"omnizip/{sid}/query/", "other_query": "omnizip/cam2/query",
                   "not_a_string": 5, "empty": "", "long_600_bytes": "d/" + "x" * 600}
    out += [(f"v311_route_{k}", "3.1.1", q(reply_to=t, id=f"b-{k}"), None, "unroutable")
            for k, t in v311_routes.items()]
    head = json.dumps({"reply_to": r3, "id": "salvage"})[:-1].encode()
    out += [
        ("v311_not_json_salvaged", "3.1.1", head + b', "question": "unterminated', None, "bad_request"),
        ("v311_300kb_salvaged", "3.1.1", b'{"question": "' + b"z" * 300_000 + b'", ' + head[1:] + b"}", None,
         "too_long"),
        ("v311_surrogate_question", "3.1.1", head + b', "question": "\\ud800"}', None, "bad_request"),
        ("v311_no_route", "3.1.1", q(), None, "unroutable"),
        ("v311_retained_question", "3.1.1", q(reply_to=r3, id="retained"), None, "ignored"),
    ]
    if not h.broker.v5:  # amqtt speaks 3.1.1 only: the v5 inputs cannot be sent
        out = [item for item in out if item[1] == "3.1.1"]
    return out


async def try_bad_input(h: Harness, item: tuple[str, str, bytes, str | None, str], raw5: Any, raw3: Any,
                        seq: int) -> dict[str, Any]:
    name, proto, payload, route, expected = item
    assert h.server is not None
    before = dict(h.server.counters)
    corr = f"c{seq}".encode()
    sent_at = len(h.seen)
    if proto == "5":
        await raw5.publish(h.server.config.query_topic, payload, qos=1, properties=props(route or "", corr))
    else:
        await raw3.publish(h.server.config.query_topic, payload, qos=1, retain=expected == "ignored")
    outcome = "nothing"
    if expected == "ignored":  # live subscribers get a retained message as a live one: the next server start sees it
        await h.start_server()
        before = {"connects": 1}
    if expected == "unroutable":
        ok = await poll_until(lambda: h.server is not None and h.server.counters["unroutable"] > before.get(
            "unroutable", 0), 3.0)
        outcome = "unroutable" if ok else outcome
    elif expected == "ignored":
        ok = await poll_until(lambda: h.server is not None and h.server.counters["ignored_retained"] > before.get(
            "ignored_retained", 0), 3.0)
        outcome = "ignored" if ok else outcome
        await raw3.publish(h.server.config.query_topic, b"", qos=1, retain=True)  # clear it
    else:
        def match(topic: str, c: bytes | None, body: dict[str, Any]) -> bool:
            return c == corr if proto == "5" else body.get("id") == "salvage"

        reply = await h.wait_reply(match, 3.0)
        if reply is not None:
            outcome = "answer" if reply.get("ok") else reply.get("error", {}).get("code", "?")
            h.replies = [r for r in h.replies if not match(*r)]
    connected_same = h.server.counters["connects"] == before.get("connects", 0)
    probe_ok = await h.probe()
    bad_route = route if expected == "unroutable" else None
    leaked = [t for t, body in h.seen[sent_at:] if bad_route is not None and t == bad_route and b'"type"' in body]
    survived = outcome == expected and connected_same and probe_ok and not leaked
    return {"name": name, "expected": expected, "outcome": outcome, "reconnected": not connected_same,
            "probe_answered": probe_ok, "published_on_bad_route": bool(leaked), "survived": survived}


async def floods(h: Harness, n: int, raw5: Any, raw3: Any) -> list[dict[str, Any]]:
    """Garbage flood, a question flood from one id, and one from rotating ids: each gets a final reply."""
    results = []
    assert h.server is not None
    for kind in ("garbage", "one_client", "rotating_ids"):
        tag = f"flood-{kind}"
        for i in range(n):
            body: Any = {"question": f"{tag} {i}", "id": f"{tag}-{i}", "reply_to": f"{h.reply_root}/flood"}
            if kind == "garbage":
                payload = b'{"id": "' + f"{tag}-{i}".encode() + b'", "reply_to": "' + \
                    f"{h.reply_root}/flood".encode() + b'", "question": ' + b"\x00broken"
            else:
                if kind == "one_client":
                    body["client_id"] = "flooder"
                else:
                    body["client_id"] = f"rot{i}"
                payload = json.dumps(body).encode()
            await raw3.publish(h.server.config.query_topic, payload, qos=1)
        ids = {f"{tag}-{i}" for i in range(n)}
        await poll_until(lambda ids=ids: ids <= {b.get("id") for _, _, b in h.replies}, 20.0)
        got = {b.get("id") for _, _, b in h.replies} & ids
        probe_ok = await h.probe()
        results.append({"name": f"flood_{kind}_{n}", "expected": f"{n} final replies", "outcome": f"{len(got)}",
                        "probe_answered": probe_ok, "survived": len(got) == n and probe_ok})
        h.replies = [r for r in h.replies if r[2].get("id") not in ids]
    return results


# ------------------------------------------------------------------ faults
async def fault_restarts_under_flood(h: Harness, n: int, restarts: int) -> dict[str, Any]:
    """A persistent device publishes ``n`` questions (QoS 1) while the broker restarts ``restarts`` times."""
    device_id = f"campdev-{h.run_id}"
    reply_topic = f"{h.reply_root}/persistent"
    acked: set[str] = set()
    answered: set[str] = set()
    restart_at = {int(n * (k + 1) / (restarts + 1)) for k in range(restarts)}
    i = 0
    deadline = time.monotonic() + 60 + n / 50

    def connect() -> Any:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        kw: dict[str, Any] = {}
        if h.broker.v5:
            p = Properties(PacketTypes.CONNECT)
            p.SessionExpiryInterval = 600
            kw = {"clean_start": False, "properties": p}
        else:
            kw = {"clean_session": False}
        return client(h.broker, device_id, **kw)

    async def read(c: Any) -> None:
        async for message in c.messages:
            with contextlib.suppress(ValueError):
                body = json.loads(message.payload)
                if isinstance(body, dict) and body.get("type") == "final":
                    answered.add(str(body.get("id")))

    while (i < n or not acked <= answered) and time.monotonic() < deadline:
        try:
            async with connect() as c:
                await c.subscribe(reply_topic, qos=1)
                reader = asyncio.ensure_future(read(c))
                try:
                    while i < n:
                        if i in restart_at:
                            restart_at.discard(i)
                            await h.broker.stop()
                            await asyncio.sleep(0.3)
                            await h.broker.start()
                            break
                        qid = f"rq-{i}"
                        body = {"question": f"restart flood {i}", "id": qid, "reply_to": reply_topic}
                        await c.publish(h.server.config.query_topic if h.server else "", json.dumps(body), qos=1)
                        acked.add(qid)
                        i += 1
                    else:
                        await poll_until(lambda r=reader: acked <= answered or r.done(),
                                     max(1.0, deadline - time.monotonic()))
                        if reader.done():
                            reader.result()
                finally:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
        except Exception as exc:  # the broker went away under us: reconnect and go on
            logger.debug("restart flood device: %s", exc)
            await asyncio.sleep(0.2)
    lost = len(acked - answered)
    probe_ok = await h.probe(10)
    return {"name": f"broker_restart_x{restarts}_during_{n}_questions", "injected": restarts,
            "questions_acked": len(acked), "questions_answered": len(acked & answered), "questions_lost": lost,
            "probe_answered": probe_ok, "survived": lost == 0 and probe_ok}


async def fault_slow_consumer(h: Harness, n: int) -> dict[str, Any]:
    """A device subscribes to its replies and never reads them while it floods questions."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h.broker.port)
    topic = f"{h.reply_root}/slow".encode()
    cid = f"slow-{h.run_id}".encode()
    vh = b"\x00\x04MQTT\x04\x02\x00\x3c"
    body = vh + len(cid).to_bytes(2, "big") + cid
    writer.write(bytes([0x10, len(body)]) + body)
    sub = b"\x00\x01" + len(topic).to_bytes(2, "big") + topic + b"\x01"
    writer.write(bytes([0x82, len(sub)]) + sub)
    await writer.drain()
    assert h.server is not None
    async with client(h.broker, v5=False) as pub:
        for i in range(n):
            await pub.publish(h.server.config.query_topic, json.dumps(
                {"question": "slow " + "x" * 150, "reply_to": topic.decode(), "id": i}), qos=1)
    probe_ok = await h.probe(10)
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    del reader
    return {"name": f"slow_consumer_{n}_replies_unread", "injected": 1, "probe_answered": probe_ok,
            "survived": probe_ok and h.alive}


async def fault_duplicate_server_id(h: Harness) -> dict[str, Any]:
    """Another client connects with the server's client id (takes its session over), then leaves."""
    assert h.server is not None
    with contextlib.suppress(Exception):
        async with client(h.broker, h.server.client_id):
            await asyncio.sleep(1.0)
    probe_ok = False
    for _ in range(3):
        probe_ok = await h.probe(5)
        if probe_ok:
            break
    return {"name": "duplicate_server_client_id", "injected": 1, "probe_answered": probe_ok, "survived": probe_ok}


async def fault_rejected_reply(h: Harness) -> dict[str, Any]:
    """A reply to a topic the broker refuses to the server (ACL): it must not block later replies."""
    if not h.broker.v5:
        return {"name": "reply_rejected_by_broker", "injected": 0, "skipped": "needs mosquitto (ACL)"}
    assert h.server is not None
    async with client(h.broker) as c:
        await c.publish(h.server.config.query_topic, json.dumps({"question": "poison"}), qos=1,
                        properties=props("poison/x", b"p"))
    await asyncio.sleep(0.5)
    probes = [await h.probe(5) for _ in range(2)]
    return {"name": "reply_rejected_by_broker", "injected": 1, "probe_answered": all(probes),
            "survived": all(probes)}


async def fault_session_failures(h: Harness) -> list[dict[str, Any]]:
    out = []
    assert h.server is not None
    async with MqttQueryClient(h.config(username=None, password=None)) as c:
        for question, code in (("boom", "internal"), ("hang", "internal")):
            try:
                await c.ask(question, timeout_s=10)
                got = "answer"
            except QueryError as exc:
                got = exc.code
            except TimeoutError:
                got = "timeout"
            probe_ok = await h.probe()
            out.append({"name": f"session_{'raises' if question == 'boom' else 'hangs'}", "injected": 1,
                        "outcome": got, "probe_answered": probe_ok, "survived": got == code and probe_ok})
    return out


async def fault_broker_down_at_start(h: Harness) -> dict[str, Any]:
    await h.stop_server()
    await h.broker.stop()
    h.servers_started += 1
    h.server = MqttQueryServer(h.service, h.config(client_id=f"omnizip-{h.stream_id}-{h.servers_started}"))
    h.task = asyncio.ensure_future(h.server.run())
    await asyncio.sleep(1.0)
    await h.broker.start()
    try:
        await h.wait_connected(15)
        probe_ok = await h.probe(10)
    except TimeoutError:
        probe_ok = False
    return {"name": "broker_down_at_server_start", "injected": 1, "probe_answered": probe_ok, "survived": probe_ok}
