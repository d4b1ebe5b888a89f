"""Secrets never leak: URLs are redacted in logs, errors and status; passwords come from env or a file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest
from mqtt_helpers import need_binary

from omnizip_stream.credentials import PASSWORD_ENV, redact_url, resolve_password
from omnizip_stream.query.broker import free_port
from omnizip_stream.query.mqtt_config import MqttConfig, cli_credentials

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "mqtt_query.py"
TS_SERVER = REPO / "tests" / "sources" / "ts_server.py"


@pytest.mark.parametrize(("url", "expected"), [
    ("mqtt://admin:pw@10.0.0.2:1883", "mqtt://***@10.0.0.2:1883"),
    ("tcp://admin:pw@127.0.0.1:5000?listen=0", "tcp://***@127.0.0.1:5000?listen=0"),
    ("rtsp://cam:p/w@host/stream", "rtsp://***@host/stream"),
    ("mqtt://u:p@ss@h:1/x", "mqtt://***@h:1/x"),
    ("admin:pw@host:1883", "***@host:1883"),
    ("udp://127.0.0.1:5000", "udp://127.0.0.1:5000"),
    ("http://host/path/user@example", "http://host/path/user@example"),
    ("file:clip.mp4", "file:clip.mp4"),
])
def test_redact_url(url, expected):
    assert redact_url(url) == expected


@pytest.mark.parametrize("url", ["mqtt://admin:s3cr3t@h:1883/some/topic", "mqtt://admin:s3cr3t@h:99999",
                                 "mqtp://admin:s3cr3t@h", "admin:s3cr3t@h:1883", "mqtt://admin:s3/cr3t@h:1883"])
def test_broker_url_errors_never_print_the_password(url):
    with pytest.raises(ValueError) as err:
        MqttConfig.from_url(url, stream_id="s")
    assert "s3cr3t" not in str(err.value) and "cr3t" not in str(err.value) and "***" in str(err.value)


def test_password_sources_and_precedence(tmp_path, caplog):
    pw_file = tmp_path / "pw"
    pw_file.write_text("from-file\nignored second line\n")
    env = {PASSWORD_ENV: "from-env"}
    assert resolve_password(None, None, environ=env) == "from-env"
    assert resolve_password(None, None, environ=env, has_username=False) is None
    assert resolve_password(None, str(pw_file), environ=env) == "from-file"
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert resolve_password("from-flag", None, environ=env) == "from-flag"
    assert "visible to other users in `ps`" in caplog.text and "from-flag" not in caplog.text
    with pytest.raises(ValueError, match="not both"):
        resolve_password("x", str(pw_file))
    with pytest.raises(ValueError, match="cannot read the password file"):
        resolve_password(None, str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        resolve_password(None, str(tmp_path / "empty"))


def test_cli_credentials_keep_the_url_password_over_the_environment(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    assert cli_credentials("mqtt://u:inurl@h", None, None, None) == {"username": None, "password": None}
    assert cli_credentials("mqtt://h", "u", None, None) == {"username": "u", "password": "from-env"}
    assert cli_credentials("mqtt://h", None, None, None) == {"username": None, "password": None}  # anonymous


def test_serve_mqtt_error_for_a_broker_url_with_a_path_hides_the_password():
    proc = subprocess.run([sys.executable, "-m", "omnizip_stream.cli", "-v", "serve-mqtt", "--broker",
                           "mqtt://admin:Pw-leak-9@127.0.0.1:1883/omnizip", "--source", "synthetic", "--model", "tiny",
                           "--duration", "5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Pw-leak-9" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
    assert "mqtt://***@127.0.0.1:1883/omnizip" in proc.stderr


@pytest.mark.broker
@pytest.mark.timeout(180)
def test_no_secret_in_any_output_or_the_retained_status(broker_factory, tmp_path):
    """serve-mqtt -v (password from the environment, a camera URL with credentials) and mqtt_query.py -vv
    (password from a file) against a broker that requires passwords: neither secret is ever printed or
    published."""
    passwd = need_binary("mosquitto_passwd")
    service_pw, device_pw, camera_pw = "Svc-pw-31415", "Dev-pw-27182", "Cam-pw-16180"
    pw = tmp_path / "passwd"
    subprocess.run([passwd, "-b", "-c", str(pw), "service", service_pw], check=True)
    subprocess.run([passwd, "-b", str(pw), "device", device_pw], check=True)
    b = broker_factory(auth=f"allow_anonymous false\npassword_file {pw}\n")
    b.start()
    cam_port = free_port()
    camera = subprocess.Popen([sys.executable, str(TS_SERVER), str(cam_port), "30", "1"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    assert camera.stdout is not None and camera.stdout.readline().strip() == "listening"
    log = open(tmp_path / "serve.log", "w+")
    env = {**os.environ, PASSWORD_ENV: service_pw}
    server = subprocess.Popen(
        [sys.executable, "-m", "omnizip_stream.cli", "-v", "serve-mqtt", "--broker", b.url, "--username", "service",
         "--stream-id", "cam1", "--source", f"tcp://admin:{camera_pw}@127.0.0.1:{cam_port}", "--model", "tiny",
         "max_new_tokens=3", "video_max_pixels=12544"],
        stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while "MQTT: questions on" not in log.read() and time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            time.sleep(0.2)
            log.seek(0)
        (tmp_path / "device.pw").write_text(device_pw + "\n")
        asked = subprocess.run([sys.executable, str(SCRIPT), "-vv", "--broker", b.url, "--username", "device",
                                "--password-file", str(tmp_path / "device.pw"), "--stream-id", "cam1", "--json",
                                "--timeout", "60", "What moved?"], capture_output=True, text=True, timeout=90)
        assert asked.returncode == 0, asked.stderr
        status = asyncio.run(_retained_status(b.port, device_pw))
        assert status["state"] == "online"
    finally:
        server.terminate()
        server.wait(30)
        camera.kill()
        camera.wait()
        log.close()
    everything = (tmp_path / "serve.log").read_text() + asked.stdout + asked.stderr + json.dumps(status)
    for secret in (service_pw, device_pw, camera_pw):
        assert secret not in everything
    assert "opened tcp://***@127.0.0.1" in everything  # the -v log names the camera, without its password


async def _retained_status(port: int, password: str) -> dict:
    async with aiomqtt.Client("127.0.0.1", port, username="device", password=password) as c:
        await c.subscribe("omnizip/cam1/status", qos=1)
        async with asyncio.timeout(10):
            return json.loads((await anext(aiter(c.messages))).payload)
