"""Test helpers for the MQTT transport: a mosquitto process, a fake QueryService, a running server.

Tests talk to a broker through ``.url`` / ``.port`` / ``.kind`` / ``.supports_v5``: :class:`Mosquitto`
here, or the project's :class:`~omnizip_stream.query.broker.EmbeddedBroker` running amqtt (MQTT 3.1.1
only) on machines without mosquitto. :func:`fast_config` picks the protocol the broker speaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnizip_stream.query.base import Answer
from omnizip_stream.query.broker import find_mosquitto, free_port
from omnizip_stream.query.mqtt import MqttConfig, MqttQueryServer


def need_binary(name: str) -> str:
    import pytest

    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install mosquitto-clients)")
    return path


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Mosquitto:
    """A mosquitto process on loopback, restartable on the same port(s)."""

    kind = "mosquitto"
    supports_v5 = True

    def __init__(self, workdir: Path, *, persistence: bool = False, extra_listeners: str = "",
                 auth: str = "", port: int | None = None) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError("mosquitto not installed")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.persistence = persistence
        self.extra_listeners = extra_listeners
        self.auth = auth
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        lines = ["per_listener_settings false", "set_tcp_nodelay true", "log_dest stderr",
                 "log_type error", "log_type warning", "log_type notice", "log_type information"]
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 0"]
        else:
            lines.append("persistence false")
        lines.append(f"listener {self.port} 127.0.0.1")
        text = "\n".join(lines) + "\n" + self.extra_listeners + "\n"
        text += self.auth if self.auth else "allow_anonymous true\n"
        return text

    def start(self, ports: tuple[int, ...] = ()) -> None:
        self.conf.write_text(self.config_text())
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        for port in (self.port, *ports):
            while not port_open(port):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto failed to start: {self.log.read_text()[-2000:]}")
                time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class FakeService:
    """Deterministic QueryService: answers ``"answer: <question>"``.

    ``latency_s`` delays every answer; ``gates`` maps a question to an Event the answer waits for;
    ``fail`` maps a question to the exception to raise. ``calls`` records every (question, max_new_tokens).
    """

    latency_s: float = 0.0
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    fail: dict[str, BaseException] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def _record(self, question: str, max_new_tokens: int) -> None:
        self.calls.append((question, max_new_tokens))
        self.started.set()

    async def _wait(self, question: str) -> None:
        if question in self.gates:
            await self.gates[question].wait()
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if question in self.fail:
            raise self.fail[question]

    async def ask(self, question: str, max_new_tokens: int = 64) -> Answer:
        self._record(question, max_new_tokens)
        await self._wait(question)
        return Answer(f"answer: {question}", 1.5, 2.5, (3, 7), (6.0, 16.0), tokens_generated=3)

    async def ask_stream(self, question: str, max_new_tokens: int = 64) -> AsyncIterator[str]:
        self._record(question, max_new_tokens)
        await self._wait(question)
        words = f"answer: {question}".split(" ")
        for i, word in enumerate(words):
            yield word if i == 0 else " " + word
            await asyncio.sleep(0)

    def stats(self) -> dict[str, Any]:
        return {"windows_ingested": 9, "window_lag_s": 0.25, "retention": 0.3, "kv_tokens": 1234,
                "kv_bytes": 56789, "calls": len(self.calls)}

    def wait_for_call(self, question: str, timeout_s: float = 10.0) -> Any:
        async def _wait() -> None:
            while not any(q == question for q, _ in self.calls):
                self.started.clear()
                await self.started.wait()

        return asyncio.wait_for(_wait(), timeout_s)


async def wait_until(predicate: Any, timeout_s: float = 10.0) -> None:
    """Poll ``predicate()`` until true (for counters that have no event to wait on)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


# Brokers that speak only MQTT 3.1.1 (amqtt), by URL: fast_config defaults to 3.1.1 for them.
V311_ONLY_URLS: set[str] = set()


def default_protocol(url: str) -> str:
    """``"3.1.1"`` for a broker registered in :data:`V311_ONLY_URLS`, else ``"5"`` (MqttConfig's default)."""
    return "3.1.1" if url in V311_ONLY_URLS else "5"


def script_protocol_flags(url: str) -> list[str]:
    """Protocol flags for scripts/mqtt_query.py against the broker at ``url`` (``--v311`` on amqtt)."""
    return ["--v311"] if default_protocol(url) == "3.1.1" else []


def fast_config(url: str, stream_id: str, **overrides: Any) -> MqttConfig:
    """A config with test-friendly timings (fast reconnect, no rate limit unless asked).

    The protocol defaults to what the broker at ``url`` speaks (:func:`default_protocol`).
    """
    base: dict[str, Any] = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.5, "rate_limit_per_s": 0.0,
                            "keepalive_s": 5, "max_queued_queries": 64, "status_interval_s": 60.0,
                            "protocol": default_protocol(url)}
    base.update(overrides)
    return MqttConfig.from_url(url, stream_id=stream_id, **base)


@contextlib.asynccontextmanager
async def serve(service: Any, config: MqttConfig) -> AsyncIterator[MqttQueryServer]:
    """Run an MqttQueryServer in the background while the block runs; cancel it afterwards.

    On amqtt the stream-id-in-use check is off: amqtt 0.12 hands the check's subscriptions (the
    status topic) to clients that connect later, which would put status messages among replies.
    """
    server = MqttQueryServer(service, config, check_in_use=config.url not in V311_ONLY_URLS)
    async with running(server):
        yield server


@contextlib.asynccontextmanager
async def running(server: MqttQueryServer) -> AsyncIterator[MqttQueryServer]:
    """Run ``server`` in the background once it has connected (10 s at most); cancel it afterwards."""
    task = asyncio.ensure_future(server.run())
    try:
        waiter = asyncio.ensure_future(server.wait_connected())
        done, _ = await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            waiter.cancel()
            task.result()
        if waiter not in done:
            waiter.cancel()
            raise TimeoutError("server did not connect")
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class FakeStreams:
    """A directory of FakeServices that can change at run time (what the MQTT server needs of StreamServer).

    ``refuse`` maps a stream id to the ValueError ``add`` raises (admission refused); ``order`` records
    ``(stream_id, question)`` of every call, across streams.
    """

    def __init__(self, **services: FakeService) -> None:
        self.services: dict[str, FakeService] = dict(services)
        self.sources: dict[str, str] = {sid: f"synthetic:{sid}" for sid in services}
        self.on_change: list[Any] = []
        self.refuse: dict[str, ValueError] = {}
        self.added: list[Any] = []

    def ids(self) -> list[str]:
        return list(self.services)

    def session(self, stream_id: str) -> FakeService:
        return self.services[stream_id]

    def describe(self) -> dict[str, Any]:
        return {sid: {"state": "running", "source": self.sources[sid]} for sid in self.services}

    async def add(self, spec: Any) -> FakeService:
        sid = spec["id"]
        if sid in self.refuse:
            raise self.refuse[sid]
        if sid in self.services:
            raise ValueError(f"stream {sid!r} exists")
        self.added.append(spec)
        self.services[sid] = FakeService()
        self.sources[sid] = spec["source"]
        for callback in self.on_change:
            callback()
        return self.services[sid]

    async def remove(self, stream_id: str) -> None:
        del self.services[stream_id]
        for callback in self.on_change:
            callback()


@contextlib.asynccontextmanager
async def serve_streams(streams: Any, config: MqttConfig, **kwargs: Any) -> AsyncIterator[MqttQueryServer]:
    """Run ``MqttQueryServer.for_streams(streams, config, **kwargs)`` while the block runs."""
    kwargs.setdefault("check_in_use", config.url not in V311_ONLY_URLS)
    server = MqttQueryServer.for_streams(streams, config, **kwargs)
    async with running(server):
        yield server


async def retained(port: int, topic: str, want: Any = None, timeout_s: float = 10.0) -> dict[str, Any]:
    """The retained JSON on ``topic`` (3.1.1 subscriber), waiting until ``want(body)`` holds when given."""
    import json

    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V311) as client:
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(timeout_s):
                async for message in client.messages:
                    if not message.topic.matches(topic):  # amqtt: another client's subscription handed over
                        continue
                    body = json.loads(message.payload) if message.payload else {}
                    if want is None or want(body):
                        return body
        finally:  # amqtt 0.12 hands a gone client's subscriptions to clients that connect later
            with contextlib.suppress(Exception):
                await client.unsubscribe(topic)
    raise AssertionError("unreachable")
