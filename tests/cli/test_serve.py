"""``omnizip serve --config FILE``: several streams, one model, every stream's MQTT topics from one process."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from omni_helpers import wait_for_text

from omnizip_stream.cli import main

BROKER = pytest.mark.skipif(shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto")
                            and importlib.util.find_spec("amqtt") is None,
                            reason="neither mosquitto (Debian package) nor amqtt (pip) is installed")


async def _ask_both(url, v311):
    from omnizip_stream.query.base import QueryError
    from omnizip_stream.query.mqtt_client import MqttQueryClient
    from omnizip_stream.query.mqtt_config import MqttConfig

    async def ask(stream_id):
        config = MqttConfig.from_url(url, stream_id=stream_id, protocol="3.1.1" if v311 else "5")
        async with MqttQueryClient(config) as client:
            try:
                reply = await client.ask(f"What is on {stream_id}?", timeout_s=120)
            except QueryError as exc:
                reply = {"error": exc.code}
            status = await client.status(timeout_s=30)
        return reply, status

    return await asyncio.gather(ask("door"), ask("bad"), ask("kitchen"))


@BROKER
@pytest.mark.broker
def test_serve_answers_every_streams_topic_and_reports_a_failing_one(tmp_path):
    config = tmp_path / "server.yaml"
    config.write_text(textwrap.dedent(f"""\
        model: tiny
        max_new_tokens: 3
        video_max_pixels: 3136
        server: {{retry_min_s: 0.2, retry_max_s: 0.5}}
        streams:
          - {{id: door, source: "synthetic:seed=1,size=64x64"}}
          - {{id: bad, source: "file:{tmp_path / 'missing.mp4'}"}}
          - {{id: kitchen, source: "synthetic:seed=2,size=64x64", rho_video: 0.7}}
        """))
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "omnizip_stream.cli", "serve", "--config", str(config),
                             "--status-interval", "1"], stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        content = wait_for_text(log, "MQTT: questions on omnizip/kitchen/query at ")
        url = content.split("MQTT: questions on omnizip/door/query at ")[1].split(";")[0]
        wait_for_text(log, "kitchen [running] t=   2.0s")  # a window is in (questions before it are not_ready)
        (door, door_status), (bad, bad_status), (kitchen, kitchen_status) = asyncio.run(
            _ask_both(url, "MQTT 3.1.1 only" in content))
        for reply in (door, kitchen):
            assert reply["answer"] and reply["window_range"][0] == 0
        assert bad == {"error": "not_ready"}  # its source never opened: nothing seen, the others answer
        for status in (door_status, bad_status, kitchen_status):
            assert status["state"] == "online" and "windows_ingested" in status["session"]
        assert bad_status["session"]["source_state"] == "retrying" and bad_status["session"]["source_retries"] >= 1
        assert "missing.mp4" in bad_status["session"]["source_error"]
        content = wait_for_text(log, "stream bad: retrying (")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        log.seek(0)
        content = log.read()
        assert "stopped (SIGTERM)" in content and "summary door:" in content and "Traceback" not in content
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(20)
        log.close()


@pytest.mark.parametrize(("text", "message"), [
    ("streams: [{id: a, source: synthetic}, {id: a, source: synthetic}]", "stream 'a': duplicate id"),
    ("streams: [{id: a, source: synthetic, model: small}]", "stream 'a': model cannot be set per stream"),
    ("streams: []", "streams: is empty"),
])
def test_a_bad_server_file_is_one_line_and_exit_2(capsys, tmp_path, text, message):
    config = tmp_path / "server.yaml"
    config.write_text(text + "\n")
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("omnizip serve: error: ") and message in err and "\n" not in err


def test_serve_needs_a_config(capsys):
    assert main(["serve"]) == 2
    assert "--config" in capsys.readouterr().err
