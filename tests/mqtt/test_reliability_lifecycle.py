"""Server lifecycle: graceful shutdown, one server per stream id, unreachable broker (issues 11 and 12)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
from mqtt_helpers import FakeService, fast_config, serve
from reliability_helpers import device, statuses, wait_for

from omnizip_stream.query.base import QueryError
from omnizip_stream.query.mqtt import MqttQueryServer
from omnizip_stream.query.mqtt_client import MqttQueryClient

# Mosquitto's own behaviour (malformed-packet disconnects, persistence, MQTT 5 devices): skipped on amqtt
# (the "mosquitto" marker is registered by tests/mqtt/conftest.py where amqtt is the fallback broker).
pytestmark = [pytest.mark.broker, pytest.mark.mosquitto]


async def test_cancel_answers_the_running_question_refuses_the_queued_and_goes_offline(broker, stream_id):
    gate = asyncio.Event()
    service = FakeService(gates={"running": gate})
    cfg = fast_config(broker.url, stream_id, max_concurrent_queries=1)
    seen: list[dict] = []
    ready = asyncio.Event()
    watcher = asyncio.ensure_future(statuses(broker.port, cfg.status_topic, seen, ready))
    await ready.wait()
    server = MqttQueryServer(service, cfg, shutdown_grace_s=5.0)
    task = asyncio.ensure_future(server.run())
    try:
        await server.wait_connected(10)
        async with MqttQueryClient(cfg) as client:
            running = asyncio.ensure_future(client.ask("running", timeout_s=10))
            await service.wait_for_call("running")
            queued = [asyncio.ensure_future(client.ask(f"queued {i}", timeout_s=10)) for i in range(3)]
            await wait_for(lambda: server.counters["accepted"] == 4)
            task.cancel()  # what SIGTERM does
            await asyncio.sleep(0.1)
            gate.set()  # the running answer finishes within the grace period
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert (await running)["answer"] == "answer: running"
            for fut in queued:
                with pytest.raises(QueryError) as err:
                    await fut
                assert err.value.code == "shutting_down"
            status = await client.status(5)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert status["state"] == "offline" and status["reason"] == "shutdown"
    assert seen[-1]["state"] == "offline" and seen[-1]["reason"] == "shutdown"  # ours, not the last will
    assert [q for q, _ in service.calls] == ["running"]


async def test_a_second_server_for_the_same_stream_id_exits_with_a_clear_error(broker, stream_id, service):
    from omnizip_stream.query.connection import StreamIdInUseError

    cfg = fast_config(broker.url, stream_id)
    async with serve(service, cfg) as first:
        second = MqttQueryServer(FakeService(), cfg)
        t0 = time.monotonic()
        with pytest.raises(StreamIdInUseError, match=f"another server already answers stream id '{stream_id}'"):
            await asyncio.wait_for(second.run(), 10)
        assert time.monotonic() - t0 < 5
        async with MqttQueryClient(cfg) as client:  # the first one was not disturbed
            assert (await client.ask("still yours?", timeout_s=10))["answer"] == "answer: still yours?"
        assert first.counters["connects"] == 1 and first.client_id.startswith(f"omnizip-{stream_id}-")
        assert second.client_id != first.client_id  # random suffix: no accidental session takeover


async def test_a_stale_online_status_from_a_dead_server_does_not_block_a_new_one(broker, stream_id, service):
    cfg = fast_config(broker.url, stream_id)
    stale = {"state": "online", "stream_id": stream_id, "instance": "dead-one", "status_interval_s": 0.2}
    async with device(broker.port) as dev:
        await dev.publish(cfg.status_topic, json.dumps(stale), qos=1, retain=True)
    t0 = time.monotonic()
    async with serve(service, cfg):
        assert time.monotonic() - t0 < 5
        async with MqttQueryClient(cfg) as client:
            assert (await client.ask("hello", timeout_s=10))["answer"] == "answer: hello"


async def test_a_server_whose_pinned_client_id_is_taken_over_exits_instead_of_knocking_back(broker, stream_id, service):
    from omnizip_stream.query.connection import StreamIdInUseError

    cfg = fast_config(broker.url, stream_id, client_id=f"pinned-{stream_id}")
    first = MqttQueryServer(service, cfg)
    second = MqttQueryServer(FakeService(), cfg, check_in_use=False)  # skip the check: the takeover is tested
    tasks = [asyncio.ensure_future(first.run())]
    try:
        await first.wait_connected(10)
        tasks.append(asyncio.ensure_future(second.run()))
        with pytest.raises(StreamIdInUseError, match="another server already answers"):
            await asyncio.wait_for(tasks[0], 10)
        await second.wait_connected(10)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_start_mqtt_fails_at_once_when_the_broker_is_unreachable(service):
    from omnizip_stream.app import MqttOptions, _start_mqtt
    from omnizip_stream.console import Console
    from omnizip_stream.query.broker import BrokerUnavailableError

    t0 = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        with pytest.raises(BrokerUnavailableError, match=r"cannot connect to the MQTT broker at mqtt://127\.0\.0\.1:1"):
            await _start_mqtt(stack, MqttOptions(stream_id="cam1", broker="mqtt://127.0.0.1:1"), service, Console())
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize(("flags", "message"), [
    (["--broker", "mqtt://127.0.0.1:1", "--rate-limit", "-1"], "rate_limit_per_s"),
    (["--rate-burst", "0"], "rate_limit_burst"),
    (["--client-id", "a b"], "client_id"),
])
def test_serve_mqtt_bad_client_id_and_rate_limit_flags_are_one_line_errors(capsys, flags, message):
    from omnizip_stream.cli import main

    t0 = time.monotonic()
    code = main(["serve-mqtt", "--source", "synthetic", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and time.monotonic() - t0 < 10  # before the model loads


async def test_a_transport_that_stops_for_good_ends_the_run_with_its_error(broker, stream_id, monkeypatch):
    """Issue 12: the stream must not go on serving silently without its MQTT server (exit 2 in the CLI)."""
    from omnizip_stream.app import MqttOptions, RunOptions, run_stream
    from omnizip_stream.config import StreamConfig
    from omnizip_stream.query.connection import StreamIdInUseError

    original = MqttQueryServer.run

    async def stops_for_good(self: MqttQueryServer) -> None:
        task = asyncio.ensure_future(original(self))
        await self.wait_connected(timeout_s=30)
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise StreamIdInUseError("another server answers this stream id")

    monkeypatch.setattr(MqttQueryServer, "run", stops_for_good)
    options = RunOptions(source="synthetic", realtime=True, status_interval_s=0.5,
                         mqtt=MqttOptions(stream_id=stream_id, broker=broker.url))
    config = StreamConfig(model="tiny", device="cpu", dtype="float32")
    t0 = time.monotonic()
    with pytest.raises(StreamIdInUseError):
        await asyncio.wait_for(run_stream(config, options), 60)  # an endless source: only the failure ends it
    assert time.monotonic() - t0 < 45


async def test_start_mqtt_reports_a_stream_id_in_use_once(broker, stream_id, service, caplog):
    """The CLI prints the refusal as its one-line error: no ERROR log line repeating it first."""
    import logging

    from omnizip_stream.app import MqttOptions, _start_mqtt
    from omnizip_stream.console import Console
    from omnizip_stream.query.connection import StreamIdInUseError

    async with serve(service, fast_config(broker.url, stream_id)):
        async with contextlib.AsyncExitStack() as stack:
            with pytest.raises(StreamIdInUseError, match="another server already answers"):
                await _start_mqtt(stack, MqttOptions(stream_id=stream_id, broker=broker.url), FakeService(), Console())
        await asyncio.sleep(0.05)  # done callbacks have run
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_serve_mqtt_answer_budget_is_the_one_the_session_generates_with(broker, stream_id):
    """The stream engine caps an answer at the config's max_new_tokens (its context reserve): the MQTT
    limit follows it, so ``max_new_tokens_used`` in a reply is what the answer really had."""
    import types

    from omnizip_stream.app import MqttOptions, _start_mqtt
    from omnizip_stream.console import Console

    service = FakeService()
    service.config = types.SimpleNamespace(max_new_tokens=32)  # what StreamSession.config gives
    async with contextlib.AsyncExitStack() as stack:
        cfg = await _start_mqtt(stack, MqttOptions(stream_id=stream_id, broker=broker.url), service, Console())
        async with MqttQueryClient(cfg) as client:
            reply = await client.ask("long answer please", max_new_tokens=100, timeout_s=10)
            default = await client.ask("default budget", timeout_s=10)
    assert reply["max_new_tokens_used"] == 32 and "32" in reply["note"]
    assert default["max_new_tokens_used"] == 32
    assert [n for _, n in service.calls] == [32, 32]
