"""Retained status: online with live counters, offline on shutdown, offline via the last will on a crash."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from mqtt_helpers import default_protocol, fast_config, serve

from omnizip_stream.query.mqtt_client import MqttQueryClient

pytestmark = pytest.mark.broker

SERVER_PROC = Path(__file__).with_name("mqtt_server_proc.py")


async def next_status(client, want_state, timeout_s=10.0):
    """Read the retained status until it has ``want_state`` (the retained copy may lag one update)."""
    async with asyncio.timeout(timeout_s):
        while True:
            status = await client.status(timeout_s)
            if status["state"] == want_state:
                return status
            await asyncio.sleep(0.02)


async def test_status_online_with_stats_then_offline_on_shutdown(broker, stream_id, service):
    cfg = fast_config(broker.url, stream_id, status_interval_s=0.05)
    async with MqttQueryClient(cfg) as client:
        async with serve(service, cfg) as server:
            await client.ask("one", timeout_s=10)
            # periodic updates carry the counters: wait for one that includes the answered query
            async with asyncio.timeout(10):
                while True:
                    status = await next_status(client, "online")
                    if status["server"].get("answered") == 1:
                        break
            assert status["stream_id"] == stream_id and status["protocol"] == cfg.protocol
            assert status["session"]["window_lag_s"] == 0.25 and status["session"]["kv_bytes"] == 56789
            assert status["server"]["connects"] == 1 and server.stats()["answered"] == 1
        offline = await next_status(client, "offline")
    assert offline["reason"] == "shutdown"


async def test_status_offline_via_last_will_when_server_process_is_killed(broker, stream_id):
    proc = await asyncio.create_subprocess_exec(sys.executable, str(SERVER_PROC), broker.url, stream_id,
                                                default_protocol(broker.url),
                                                stdout=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip() == b"ready"
        cfg = fast_config(broker.url, stream_id)
        async with MqttQueryClient(cfg) as client:
            assert (await client.ask("alive?", timeout_s=10))["answer"] == "answer: alive?"
            assert (await next_status(client, "online"))["state"] == "online"
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            status = await next_status(client, "offline")
        assert status["reason"] == "connection lost" and status["stream_id"] == stream_id
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
