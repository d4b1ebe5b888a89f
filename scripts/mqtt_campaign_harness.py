"""Harness of scripts/mqtt_campaign.py: a restartable loopback broker, the server under attack, a sniffer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
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
# What mosquitto keeps for the server's session while it is away (default 1000, beyond which it drops the
# questions it already PUBACKed): sized for the largest --flood, as the README tells deployments to do.
BROKER_MAX_QUEUED = 100_000
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
                                   auth=f"allow_anonymous true\nacl_file {workdir / 'acl'}\n"
                                        f"max_queued_messages {BROKER_MAX_QUEUED}\n")

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


# ------------------------------------------------------------------ campaign
async def poll_until(predicate: Any, timeout_s: float) -> bool:
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
