"""The embedded broker for single-machine demos: mosquitto, else amqtt in a child process; no leftovers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from mqtt_helpers import FakeService, fast_config, port_open, serve

from omnizip_stream.cli import main
from omnizip_stream.query import broker as broker_mod
from omnizip_stream.query.broker import BrokerUnavailableError, EmbeddedBroker, free_port, mosquitto_config
from omnizip_stream.query.mqtt_client import MqttQueryClient

REPO = Path(__file__).resolve().parents[2]
KINDS = [pytest.param("mosquitto", marks=pytest.mark.mosquitto), "amqtt"]


@pytest.fixture
def kind(request, monkeypatch):
    """Which embedded broker to start: mosquitto (skipped when missing) or amqtt (mosquitto hidden)."""
    if request.param == "mosquitto":
        if broker_mod.find_mosquitto() is None:
            pytest.skip("mosquitto is not installed")
    else:
        pytest.importorskip("amqtt.broker", reason="amqtt is not installed (pip install amqtt)")
        monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: None)
    return request.param


def pid_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for a reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    return False


async def wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pid_gone(pid):
        assert time.monotonic() < deadline, f"broker process {pid} is still running"
        await asyncio.sleep(0.05)


def files_on_disk(pid: int) -> list[str]:
    """Paths the process has open that exist on disk (unlinked temp files and pipes do not count)."""
    fds = Path(f"/proc/{pid}/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc")
    paths = []
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("/") and not target.startswith("/dev/") and not target.endswith("(deleted)"):
                paths.append(target)
    return paths


def assert_no_leftovers(pid: int, port: int) -> None:
    assert pid_gone(pid), f"broker process {pid} is still running"
    assert not port_open(port)


@pytest.mark.broker
async def test_embedded_mosquitto_starts_serves_and_says_so(mosquitto_bin, stream_id, caplog):
    caplog.set_level(logging.WARNING, logger="omnizip_stream.query.broker")
    async with EmbeddedBroker() as b:
        assert b.kind == "mosquitto" and b.supports_v5
        assert f"EMBEDDED MQTT broker (mosquitto) at {b.url}" in caplog.text
        service = FakeService()
        async with serve(service, fast_config(b.url, stream_id)):
            async with MqttQueryClient(fast_config(b.url, stream_id)) as client:
                assert (await client.ask("demo?", timeout_s=10))["answer"] == "answer: demo?"
    with pytest.raises(ConnectionError):  # stopped
        async with MqttQueryClient(fast_config(b.url, stream_id)):
            pass


async def test_embedded_amqtt_fallback_when_mosquitto_is_missing(monkeypatch, stream_id, caplog):
    pytest.importorskip("amqtt.broker", reason="amqtt is not installed (pip install amqtt)")
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: None)
    caplog.set_level(logging.WARNING, logger="omnizip_stream.query.broker")
    async with EmbeddedBroker() as b:
        assert b.kind == "amqtt" and not b.supports_v5
        assert "MQTT 3.1.1 only" in caplog.text
        cfg = fast_config(b.url, stream_id, protocol="3.1.1")
        async with serve(FakeService(), cfg), MqttQueryClient(cfg) as client:
            assert (await client.ask("fallback?", timeout_s=10))["answer"] == "answer: fallback?"


async def test_no_broker_available_gives_actionable_error(monkeypatch):
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: None)
    monkeypatch.setitem(sys.modules, "amqtt", None)  # makes `import amqtt.broker` fail
    with pytest.raises(BrokerUnavailableError, match=r"install mosquitto .* or pass --broker"):
        await EmbeddedBroker().start()


@pytest.mark.parametrize("kind", KINDS, indirect=True)
async def test_embedded_broker_is_a_child_process_and_stop_leaves_nothing(kind, stream_id):
    async with EmbeddedBroker() as b:
        assert b.kind == kind and b.pid is not None and not pid_gone(b.pid)
        assert files_on_disk(b.pid) == []  # config through a pipe, log in an unlinked file: nothing to leave
        cfg = fast_config(b.url, stream_id, protocol="5" if b.supports_v5 else "3.1.1")
        async with serve(FakeService(), cfg), MqttQueryClient(cfg) as client:
            assert (await client.ask("child?", timeout_s=10))["answer"] == "answer: child?"
        pid, port = b.pid, b.port
    assert b.pid is None
    assert_no_leftovers(pid, port)


@pytest.mark.parametrize("kind", KINDS, indirect=True)
async def test_cancelling_the_task_that_holds_the_broker_leaves_nothing(kind):
    started: asyncio.Future[EmbeddedBroker] = asyncio.get_running_loop().create_future()

    async def hold() -> None:
        async with EmbeddedBroker() as b:
            started.set_result(b)
            await asyncio.Event().wait()

    task = asyncio.ensure_future(hold())
    b = await asyncio.wait_for(started, 30)
    pid, port = b.pid, b.port
    assert pid is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_no_leftovers(pid, port)


@pytest.mark.parametrize("kind", KINDS, indirect=True)
async def test_cancelling_stop_itself_still_ends_the_broker(kind):
    b = await EmbeddedBroker().start()
    pid, port = b.pid, b.port
    assert pid is not None
    stopping = asyncio.ensure_future(b.stop())
    await asyncio.sleep(0)  # stop() has asked the broker to exit and is waiting for it
    stopping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stopping
    await wait_gone(pid)
    assert_no_leftovers(pid, port)


@pytest.mark.parametrize("kind", KINDS, indirect=True)
async def test_broker_exits_when_omnizip_is_killed(kind):
    if kind == "mosquitto" and broker_mod._die_with_parent() == []:
        pytest.skip("setpriv (util-linux) is not available")
    code = ("import asyncio\n"
            "from omnizip_stream.query.broker import EmbeddedBroker\n"
            "async def main():\n"
            f"    b = await EmbeddedBroker(prefer={kind!r}).start()\n"
            "    print(b.pid, b.port, flush=True)\n"
            "    await asyncio.sleep(120)\n"
            "asyncio.run(main())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    parent = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE,
                                                  stderr=asyncio.subprocess.DEVNULL, env=env)
    try:
        line = await asyncio.wait_for(parent.stdout.readline(), 60)
        child_pid, port = map(int, line.split())
        assert not pid_gone(child_pid) and port_open(port)
    finally:
        parent.send_signal(signal.SIGKILL)  # no cleanup code runs in the parent
        await parent.wait()
    await wait_gone(child_pid)


@pytest.mark.parametrize("kind", KINDS, indirect=True)
async def test_fixed_port_is_used_and_a_taken_port_is_a_clear_error(kind):
    port = free_port()
    async with EmbeddedBroker(port) as b:
        assert b.port == port and b.url == f"mqtt://127.0.0.1:{port}" and port_open(port)
        with pytest.raises(BrokerUnavailableError, match=f"port {port} on 127.0.0.1 is in use"):
            await EmbeddedBroker(port).start()
    with pytest.raises(ValueError, match="1..65535"):
        EmbeddedBroker(70000)


async def test_a_free_port_taken_before_the_start_is_replaced(monkeypatch):
    pytest.importorskip("amqtt.broker", reason="amqtt is not installed (pip install amqtt)")
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: None)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        b = EmbeddedBroker()
        b.port = taken  # as if another program took the free port between __init__ and start()
        async with b:
            assert b.port != taken and port_open(b.port)


async def test_a_mosquitto_that_cannot_start_falls_back_to_amqtt(monkeypatch, caplog):
    pytest.importorskip("amqtt.broker", reason="amqtt is not installed (pip install amqtt)")
    broken = shutil.which("false")
    assert broken is not None
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: broken)  # exits at once, like a broken install
    caplog.set_level(logging.WARNING, logger="omnizip_stream.query.broker")
    async with EmbeddedBroker() as b:
        assert b.kind == "amqtt" and port_open(b.port)
    assert "mosquitto did not start" in caplog.text and "using amqtt instead" in caplog.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve-mqtt", "--broker", "mqtt://127.0.0.1:1883", "--broker-port", "1884"], "cannot be combined with --broker"),
        (["serve-mqtt", "--broker-port", "0"], "--broker-port must be 1..65535"),
        (["demo", "--broker-port", "65536"], "--broker-port must be 1..65535"),
    ],
)
def test_broker_port_flag_mistakes_are_one_line_errors(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err


def test_broker_port_in_use_is_refused_before_the_model_loads(capsys):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        started = time.monotonic()
        assert main(["serve-mqtt", "--broker-port", str(port), "--source", "synthetic", "--duration", "2"]) == 2
    err = capsys.readouterr().err
    assert f"--broker-port {port}: the port is in use" in err and "Traceback" not in err
    assert time.monotonic() - started < 5


def test_demo_without_mosquitto_serves_mqtt_on_amqtt_at_the_given_port(monkeypatch, capsys, caplog):
    pytest.importorskip("amqtt.broker", reason="amqtt is not installed (pip install amqtt)")
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: None)
    caplog.set_level(logging.WARNING, logger="omnizip_stream.query.broker")
    port = free_port()
    assert main(["demo", "--duration", "4", "--no-realtime", "--broker-port", str(port)]) == 0
    out = capsys.readouterr().out
    assert f"EMBEDDED MQTT broker (amqtt, MQTT 3.1.1 only) at mqtt://127.0.0.1:{port}" in caplog.text
    assert "MQTT omnizip/demo/query" in out and out.count("[first token") >= 2
    assert "MQTT query failed" not in out
    assert not port_open(port)


def test_generated_mosquitto_config_has_nodelay_and_loopback_listener():
    text = mosquitto_config(18831)
    assert "set_tcp_nodelay true" in text
    assert "listener 18831 127.0.0.1" in text
    import os

    assert ("user root" in text) == (os.geteuid() == 0)
