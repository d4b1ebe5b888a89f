"""``omnizip serve --http``: the real command, its URL line, the official client, SIGTERM; refusals exit 2."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from omni_helpers import wait_for_text

pytestmark = pytest.mark.timeout(240)
SERVER_FILE = """\
    model: tiny
    max_new_tokens: 4
    video_max_pixels: 3136
    streams:
      - {id: door, source: "synthetic:seed=1,size=64x64"}
    """


def omnizip(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "omnizip_stream.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})}, **kwargs)


@pytest.fixture
def server_file(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text(textwrap.dedent(SERVER_FILE))
    return path


def test_a_network_address_without_a_key_is_refused_in_one_line(server_file):
    env = {k: v for k, v in os.environ.items() if k != "OMNIZIP_API_KEY"}
    done = subprocess.run([sys.executable, "-m", "omnizip_stream.cli", "serve", "--config", str(server_file),
                           "--http", "0.0.0.0:0"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "OMNIZIP_API_KEY" in lines[0] and "Traceback" not in done.stderr


def test_a_taken_port_is_one_line_before_the_model_loads(server_file):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = omnizip("serve", "--config", str(server_file), "--http", f"127.0.0.1:{port}")
    assert done.returncode == 2, done.stderr
    error_lines = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1 and f"cannot serve HTTP on 127.0.0.1:{port}" in error_lines[0]
    assert "Traceback" not in done.stderr and "added" not in done.stdout  # no stream started


def test_no_mqtt_needs_http_and_contradicts_broker(server_file):
    done = omnizip("serve", "--config", str(server_file), "--no-mqtt")
    assert done.returncode == 2 and "--http" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = omnizip("serve", "--config", str(server_file), "--no-mqtt", "--http", ":0", "--broker", "mqtt://x:1883")
    assert done.returncode == 2 and "contradict" in done.stderr


def test_serve_http_logs_its_url_answers_the_openai_client_and_stops_on_sigterm(server_file, tmp_path):
    """HTTP only (--no-mqtt: no broker needed, as on a fresh machine), on 0.0.0.0 with a key."""
    openai = pytest.importorskip("openai")
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "omnizip_stream.cli", "serve", "--config", str(server_file),
                             "--http", "0.0.0.0:0", "--no-mqtt"], stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMNIZIP_API_KEY": "test-key"})
    try:
        content = wait_for_text(log, "HTTP API on http://")
        assert "MQTT" not in content and "broker" not in content
        url_line = [line for line in content.splitlines() if "HTTP API on" in line]
        assert len(url_line) == 1
        port = int(url_line[0].rsplit(":", 1)[1].strip("/ "))
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/v1/streams").status_code == 401
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="test-key", max_retries=0, timeout=120)
        deadline = time.time() + 120
        while True:  # the first window takes a moment: not_ready (503) until then
            try:
                pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
                    model="door", messages=[{"role": "user", "content": "what is there?"}], stream=True)
                    if c.choices]
                break
            except openai.APIStatusError as exc:
                assert exc.status_code == 503 and time.time() < deadline, exc
                time.sleep(0.5)
        assert "".join(pieces)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
