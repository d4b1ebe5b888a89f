#!/usr/bin/env python
"""Attack the MQTT query service the way its environment will, and report what it survived (JSON).

    python scripts/mqtt_campaign.py --out results/mqtt_campaign.json            # full campaign, ~1-2 min
    python scripts/mqtt_campaign.py --flood 200 --restarts 1 --out /tmp/c.json  # small (the test suite's)

Loopback only, bounded in count (``--flood``, ``--restarts``) and time (``--deadline-s``). It starts its own
broker on a free port (mosquitto with persistence and an ACL; amqtt, MQTT 3.1.1 only, when mosquitto is
missing) and runs the real :class:`MqttQueryServer` in this process on a fake session (answers
``"answer: <question>"`` at once; ``boom`` raises, ``hang`` never returns). Then:

* every bad input (malformed / oversize / non-JSON payloads, lone surrogates, control characters and
  non-characters in routes, wildcards, confinement violations, floods) is sent once; it *survived* when
  the expected error reply (or the counted drop) happened, the server kept its connection, nothing
  was published on the bad route, and a probe question right after it was answered;
* faults are injected (broker restarts under a question flood, a slow consumer, a second client with
  the server's client id, a reply the broker rejects, a failing and a hanging session, the broker
  down at start); a fault *survived* when the service answers again afterwards and, for the flood,
  no question was lost (every question the broker acknowledged got a final reply: an answer, ``busy``
  or ``rate_limited``);
* every log record and every message seen on the broker is searched for the broker password.

Report: ``bad_inputs_tried/survived``, ``faults_injected/survived``, ``questions_lost``,
``secrets_printed``, and the per-item details.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "mqtt"))

from mqtt_helpers import FakeService, Mosquitto, fast_config  # noqa: E402

from omnizip_stream.query.base import QueryError  # noqa: E402
from omnizip_stream.query.broker import EmbeddedBroker, find_mosquitto, free_port  # noqa: E402
from omnizip_stream.query.mqtt import MqttConfig, MqttQueryServer  # noqa: E402
from omnizip_stream.query.mqtt_client import MqttQueryClient  # noqa: E402

logger = logging.getLogger("mqtt_campaign")
SERVER_USER = "omnizip-campaign"
# the server's account may not publish under poison/: a reply routed there is refused by the broker
ACL = f"topic readwrite #\ntopic deny poison/#\n\nuser {SERVER_USER}\ntopic readwrite #\ntopic deny poison/#\n"


# ------------------------------------------------------------------ broker
class Broker:
    """mosquitto (persistent, ACL) or amqtt on one loopback port, restartable."""

    def __init__(self, workdir: Path, prefer: str) -> None:
        self.port = free_port()
        self.kind = "mosquitto" if prefer == "mosquitto" and find_mosquitto() else "amqtt"
        self._mosq: Mosquitto | None = None
        self._amqtt: EmbeddedBroker | None = None
        if self.kind == "mosquitto":
            (workdir / "acl").write_text(ACL)
            self._mosq = Mosquitto(workdir, persistence=True, port=self.port,
                                   auth=f"allow_anonymous true\nacl_file {workdir / 'acl'}\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def v5(self) -> bool:
        return self.kind == "mosquitto"

    async def start(self) -> None:
        if self._mosq is not None:
            await asyncio.to_thread(self._mosq.start)
        else:
            self._amqtt = await EmbeddedBroker(self.port, prefer="amqtt").start()

    async def stop(self) -> None:
        if self._mosq is not None:
            await asyncio.to_thread(self._mosq.stop)
        elif self._amqtt is not None:
            await self._amqtt.stop()
            self._amqtt = None


class CampaignService(FakeService):
    """The tests' fake session plus two misbehaving questions: ``boom`` raises, ``hang`` never returns."""

    def __init__(self) -> None:
        super().__init__(fail={"boom": RuntimeError("session bug")}, gates={"hang": asyncio.Event()})


# ------------------------------------------------------------------ harness
class Harness:
    """A server, a listener on every reply, a sniffer on ``#`` and a probe client."""

    def __init__(self, broker: Broker, password: str, run_id: str) -> None:
        self.broker = broker
        self.password = password
        self.run_id = run_id
        self.stream_id = f"camp{run_id}"
        self.reply_root = f"dev/{run_id}"
        self.service = CampaignService()
        self.server: MqttQueryServer | None = None
        self.task: asyncio.Task[None] | None = None
        self.replies: list[tuple[str, bytes | None, dict[str, Any]]] = []
        self.seen: list[tuple[str, bytes]] = []
        self._new_reply = asyncio.Event()
        self.servers_started = 0
        self.server_stop_hangs = 0  # MqttQueryServer.run() still running 10 s after cancel()

    def config(self, **overrides: Any) -> MqttConfig:
        base: dict[str, Any] = {"username": SERVER_USER, "password": self.password, "max_payload_bytes": 16384,
                                "max_question_chars": 200, "max_new_tokens_limit": 32, "default_max_new_tokens": 8,
                                "query_timeout_s": 2.0, "max_queued_queries": 4096, "status_interval_s": 0.5,
                                "rate_limit_per_s": 50.0, "rate_limit_burst": 100,
                                "protocol": "5" if self.broker.v5 else "3.1.1"}
        base.update(overrides)
        return fast_config(self.broker.url, self.stream_id, **base)

    async def start_server(self) -> None:
        await self.stop_server()
        self.servers_started += 1  # a fresh client id each time: a server that failed to stop keeps its own
        self.server = MqttQueryServer(self.service, self.config(client_id=f"omnizip-{self.stream_id}-"
                                                                          f"{self.servers_started}"))
        self.task = asyncio.ensure_future(self.server.run())
        await self.wait_connected(15)

    async def wait_connected(self, timeout_s: float) -> None:
        assert self.server is not None and self.task is not None
        waiter = asyncio.ensure_future(self.server.wait_connected())
        done, _ = await asyncio.wait({waiter, self.task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if waiter not in done:
            raise TimeoutError("the server did not (re)connect")

    async def stop_server(self) -> None:
        if self.task is not None:
            self.task.cancel()
            done, _ = await asyncio.wait({self.task}, timeout=10)
            if not done:
                self.server_stop_hangs += 1
                logger.error("the server did not stop within 10 s of cancel(); abandoning it")
        self.task = None

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def listen(self, client: Any) -> None:
        async for message in client.messages:
            topic = message.topic.value
            self.seen.append((topic, bytes(message.payload)))
            if topic.endswith("/query"):
                continue  # the attack itself (may be anything, e.g. nested 100,000 deep)
            try:
                body = json.loads(message.payload)
            except (ValueError, RecursionError):
                continue
            if isinstance(body, dict) and body.get("type") == "final":
                corr = getattr(message.properties, "CorrelationData", None) if message.properties else None
                self.replies.append((topic, bytes(corr) if corr is not None else None, body))
                self._new_reply.set()

    async def wait_reply(self, match: Any, timeout_s: float) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    for topic, corr, body in self.replies:
                        if match(topic, corr, body):
                            return body
                    self._new_reply.clear()
                    await self._new_reply.wait()
        except TimeoutError:
            return None

    async def probe(self, timeout_s: float = 5.0) -> bool:
        if not self.alive:
            return False
        try:
            async with MqttQueryClient(self.config(username=None, password=None)) as client:
                reply = await client.ask(f"probe {uuid.uuid4().hex[:6]}", timeout_s=timeout_s)
            return reply.get("ok") is True
        except (QueryError, TimeoutError, ConnectionError):
            return False


def client(broker: Broker, client_id: str | None = None, *, v5: bool | None = None, **kw: Any) -> Any:
    import aiomqtt

    use_v5 = broker.v5 if v5 is None else v5
    return aiomqtt.Client("127.0.0.1", broker.port, identifier=client_id or f"camp-{uuid.uuid4().hex[:8]}",
                          protocol=aiomqtt.ProtocolVersion.V5 if use_v5 else aiomqtt.ProtocolVersion.V311, **kw)


def props(topic: str, correlation: bytes) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    p = Properties(PacketTypes.PUBLISH)
    p.ResponseTopic = topic
    p.CorrelationData = correlation
    return p


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
        ok = await _until(lambda: h.server is not None and h.server.counters["unroutable"] > before.get(
            "unroutable", 0), 3.0)
        outcome = "unroutable" if ok else outcome
    elif expected == "ignored":
        ok = await _until(lambda: h.server is not None and h.server.counters["ignored_retained"] > before.get(
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
        await _until(lambda ids=ids: ids <= {b.get("id") for _, _, b in h.replies}, 20.0)
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
                        await _until(lambda r=reader: acked <= answered or r.done(),
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
        async with client(h.broker, h.server.config.server_client_id):
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


# ------------------------------------------------------------------ campaign
async def _until(predicate: Any, timeout_s: float) -> bool:
    """Poll ``predicate()`` (server counters have no event to wait on) until true or ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.01)  # noqa: ASYNC110
    return True


@contextlib.asynccontextmanager
async def running(broker: Broker) -> AsyncIterator[None]:
    await broker.start()
    try:
        yield
    finally:
        await broker.stop()


async def campaign(args: argparse.Namespace, records: list[str]) -> dict[str, Any]:
    import tempfile

    t0 = time.monotonic()
    password = "pw-" + secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="omnizip-campaign-") as tmp:
        broker = Broker(Path(tmp), args.broker)
        h = Harness(broker, password, uuid.uuid4().hex[:6])
        bad: list[dict[str, Any]] = []
        faults: list[dict[str, Any]] = []
        async with running(broker):
            async with client(broker) as sniffer, client(broker, v5=False) as raw3, client(broker) as raw5:
                await sniffer.subscribe("#", qos=1)
                listener = asyncio.ensure_future(h.listen(sniffer))
                await h.start_server()
                for seq, item in enumerate(bad_inputs(h)):
                    if time.monotonic() - t0 > args.deadline_s:
                        break
                    result = await try_bad_input(h, item, raw5 if broker.v5 else None, raw3, seq)
                    bad.append(result)
                    progress(result)
                    if not h.alive or not result["probe_answered"]:
                        await h.start_server()  # measure the next input on a working server
                progress({"name": "floods"})
                bad += await floods(h, args.flood, raw5, raw3)
                for fault in await fault_session_failures(h):
                    faults.append(fault)
                    progress(fault)
                for run_fault in (fault_rejected_reply, lambda h: fault_slow_consumer(h, args.flood),
                                  fault_duplicate_server_id):
                    if not h.alive:
                        await h.start_server()
                    faults.append(await run_fault(h))
                    progress(faults[-1])
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
            if not h.alive:
                await h.start_server()
            faults.append(await fault_restarts_under_flood(h, args.flood, args.restarts))
            progress(faults[-1])
            faults.append(await fault_broker_down_at_start(h))
            progress(faults[-1])
            await h.stop_server()
        seen_text = "".join(t + body.decode("utf-8", "replace") for t, body in h.seen)
    try:  # an error about a broker URL carrying the password
        MqttConfig.from_url(f"mqtt://{SERVER_USER}:{password}@127.0.0.1:1/a/path", stream_id="x")
    except ValueError as exc:
        records.append(str(exc))
    records.append(json.dumps(h.config().redacted()))
    secrets_printed = sum(text.count(password) for text in records) + seen_text.count(password)
    injected = [f for f in faults if f.get("injected")]
    return {
        "broker": broker.kind,
        "bad_inputs_tried": len(bad), "bad_inputs_survived": sum(b["survived"] for b in bad),
        "faults_injected": sum(f["injected"] for f in injected),
        "faults_survived": sum(f["injected"] for f in injected if f["survived"]),
        "questions_lost": sum(f.get("questions_lost", 0) for f in faults),
        "secrets_printed": secrets_printed,
        "server_stop_hangs": h.server_stop_hangs,
        "log_records": len(records), "messages_seen": len(h.seen),
        "wall_s": round(time.monotonic() - t0, 1),
        "not_survived": [b["name"] for b in bad if not b["survived"]] + [f["name"] for f in injected
                                                                         if not f["survived"]],
        "bad_inputs": bad, "faults": faults,
        "settings": {"flood": args.flood, "restarts": args.restarts, "deadline_s": args.deadline_s},
    }


def progress(item: dict[str, Any]) -> None:
    """One line per finished item on stderr (the campaign is long; the JSON has the details)."""
    mark = {True: "ok  ", False: "FAIL", None: "... "}[item.get("survived")]
    print(f"{mark} {item['name']}", file=sys.stderr, flush=True)


class _Capture(logging.Handler):
    def __init__(self, records: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flood", type=int, default=2000, help="questions per flood and per restart flood (default 2000)")
    p.add_argument("--restarts", type=int, default=3, help="broker restarts during the flood (default 3)")
    p.add_argument("--broker", choices=("mosquitto", "amqtt"), default="mosquitto",
                   help="broker to start (mosquitto falls back to amqtt when it is not installed)")
    p.add_argument("--deadline-s", type=float, default=300.0, help="stop trying bad inputs after this long")
    p.add_argument("--out", type=Path, default=Path("results/mqtt_campaign.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.flood <= 20_000 or not 0 <= args.restarts <= 10:
        print("error: --flood must be in 1..20000 and --restarts in 0..10", file=sys.stderr)
        return 2
    records: list[str] = []
    capture = _Capture(records)
    capture.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.ERROR)  # the campaign provokes many warnings on purpose
    root = logging.getLogger()
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    report = asyncio.run(campaign(args, records))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: report[k] for k in ("broker", "bad_inputs_tried", "bad_inputs_survived", "faults_injected",
                                      "faults_survived", "questions_lost", "secrets_printed", "wall_s",
                                      "not_survived")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
