"""``omnizip stream`` as a user runs it in a terminal: a pseudo-terminal, a paced source, keys typed mid-stream.

Also the process lifecycle: Ctrl-C (SIGINT through the terminal) exits 130 at once, SIGTERM stops
``stream`` and ``serve-mqtt`` gracefully with exit code 0.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ["--config", str(REPO / "configs" / "tiny-cpu.yaml")]
ROWS, COLS = 40, 200
LOAD_S = 120.0  # model load and first window on a busy 2-core machine

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX terminals and signals")


class Terminal:
    """A child process on a pseudo-terminal (its controlling terminal): type keys, read the screen bytes."""

    def __init__(self, *args: str) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omnizip_stream.cli", *args], stdin=slave, stdout=slave, stderr=slave,
            env=env, start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.master = master
        self.output = b""
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            with self._lock:
                self.output += data

    @property
    def text(self) -> str:
        with self._lock:
            return self.output.decode("utf-8", "replace")

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait_for(self, pattern: str, timeout_s: float, start: int = 0) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears in the output after character ``start``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text[start:])
            if found:
                return found
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader catch the last bytes
                found = re.search(pattern, self.text[start:])
                if found:
                    return found
                raise AssertionError(f"exited {self.proc.returncode} before {pattern!r}:\n{self.text[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout_s} s:\n{self.text[-3000:]}")

    def windows_shown(self, start: int = 0) -> list[int]:
        """The window counts of the status lines after character ``start``."""
        return [int(n) for n in re.findall(r"\| windows (\d+) \(", self.text[start:])]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        os.close(self.master)


@pytest.fixture
def terminal():
    made: list[Terminal] = []

    def start(*args: str) -> Terminal:
        made.append(Terminal(*args))
        return made[-1]

    yield start
    for t in made:
        t.close()


def test_a_question_typed_mid_stream_is_answered_while_windows_keep_coming(terminal):
    term = terminal("stream", "--source", "synthetic", "--duration", "30", "--status-interval", "0.5", *TINY)
    term.wait_for(r"type a question", LOAD_S)
    term.wait_for(r"\| windows [1-9]\d* \(", 30)  # the stream is running (t >= 2 s)
    typed_at = time.monotonic()
    mark = len(term.text)
    term.type("What is moving?\r")
    found = term.wait_for(r"saw windows 0-(\d+)", 20, mark)
    answered_in_s = time.monotonic() - typed_at
    last_seen = int(found.group(1))
    assert "Q: What is moving?" in term.text[mark:]
    assert "source ended" not in term.text  # answered during the stream, not at its end
    assert answered_in_s < 15 and last_seen < 10  # stream time t < 20 s of the 30-s source
    after = len(term.text)
    term.wait_for(rf"\| windows ({last_seen + 3}|[1-9]\d) \(", 30, after)  # ingestion goes on after the answer
    term.type("quit\r")
    assert term.proc.wait(30) == 0
    term.wait_for(r"summary: ", 5)


def test_status_stops_at_the_end_of_the_source_and_nothing_is_dropped(terminal):
    term = terminal("stream", "--source", "synthetic", "--duration", "4", "--status-interval", "0.3", *TINY)
    term.wait_for(r"the source ended", LOAD_S)
    end = len(term.text)
    time.sleep(2.0)  # the prompt stays open: the status must not keep printing or climbing
    assert len(term.windows_shown(end)) <= 1 and "behind live" not in term.text[end:]
    term.type("quit\r")
    assert term.proc.wait(30) == 0
    summary = term.wait_for(r"summary: (.*)", 5).group(1)
    assert "| windows 2 (" in summary  # two 2-s windows: the source stopped at --duration
    assert "dropped video 0" in summary and "dropped audio" not in summary
    assert "source ended" in summary


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_at_the_prompt_exits_130_within_a_second(terminal, presses):
    term = terminal("stream", "--source", "synthetic", "--duration", "60", "--status-interval", "0.5", *TINY)
    term.wait_for(r"type a question", LOAD_S)
    term.wait_for(r"\| windows [1-9]\d* \(", 30)
    term.type("half a quest")  # no Enter: the prompt is waiting for the rest of the line
    time.sleep(0.2)
    t0 = time.monotonic()
    for _ in range(presses):
        term.type("\x03")  # Ctrl-C: the terminal sends SIGINT to the foreground process group
        time.sleep(0.05)
    code = term.proc.wait(10)
    elapsed_s = time.monotonic() - t0
    assert code == 130, term.text[-2000:]
    assert elapsed_s < 1.0, f"took {elapsed_s:.2f} s"
    assert "Traceback" not in term.text
    assert "\x1b[r" in term.text  # the terminal's scrolling region was given back


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def _wait_in_file(path: Path, pattern: str, proc: subprocess.Popen, timeout_s: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text(errors="replace"))
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {path.read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} within {timeout_s} s: {path.read_text()[-3000:]}")


def test_sigterm_stops_stream_with_exit_0_and_the_summary(tmp_path):
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as fout, open(err, "w") as ferr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "omnizip_stream.cli", "stream", "--source", "synthetic", "--duration", "120",
             "--no-interactive", "--status-interval", "0.3", *TINY],
            stdin=subprocess.DEVNULL, stdout=fout, stderr=ferr, env=_env())
        try:
            _wait_in_file(err, r"\| windows [1-9]\d* \(", proc, LOAD_S)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
            elapsed_s = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0, err.read_text()[-2000:]
    assert elapsed_s < 3.0, f"took {elapsed_s:.2f} s"
    assert "summary: " in out.read_text() and "Traceback" not in err.read_text()
    assert "stopped (SIGTERM)" in err.read_text()


def _children(pid: int) -> dict[int, str]:
    """Child processes of ``pid`` (from /proc): pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.broker
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_stops_serve_mqtt_and_its_embedded_broker(tmp_path, signum):
    """systemd/Docker stop (SIGTERM) or a closed terminal (SIGHUP): exit 0, nothing left behind."""
    from omnizip_stream.query.broker import find_mosquitto

    log = tmp_path / "serve.log"
    with open(log, "w") as flog:
        proc = subprocess.Popen(
            [sys.executable, "-m", "omnizip_stream.cli", "serve-mqtt", "--stream-id", "term1", "--source", "synthetic",
             *TINY], stdin=subprocess.DEVNULL, stdout=flog, stderr=subprocess.STDOUT, env=_env())
        try:
            _wait_in_file(log, r"MQTT: questions on omnizip/term1/query", proc, LOAD_S)
            # mosquitto when installed, else the amqtt child process; neither writes a temp dir any more
            name = "mosquitto" if find_mosquitto() is not None else "amqtt_child"
            brokers = {pid: cmd for pid, cmd in _children(proc.pid).items() if name in cmd}
            assert brokers, _children(proc.pid)
            t0 = time.monotonic()
            proc.send_signal(signum)
            code = proc.wait(30)
            elapsed_s = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert elapsed_s < 10, f"took {elapsed_s:.2f} s"
    assert not [pid for pid in brokers if _alive(pid)], "the embedded mosquitto outlived serve-mqtt"
    assert "summary: " in text and "Traceback" not in text
    assert f"stopped ({signal.Signals(signum).name})" in text


async def _retained(url: str, topic: str) -> dict:
    import json

    import aiomqtt

    host, port = url.split("//")[1].split(":")
    async with aiomqtt.Client(host, int(port)) as client, asyncio.timeout(10):
        await client.subscribe(topic)
        async for message in client.messages:
            return json.loads(bytes(message.payload))
    raise AssertionError("no retained status")


@pytest.mark.broker
def test_sigterm_on_serve_mqtt_publishes_status_offline_shutdown(tmp_path):
    from omnizip_stream.query.broker import EmbeddedBroker, find_mosquitto

    if find_mosquitto() is None:
        pytest.skip("an external broker that outlives serve-mqtt needs mosquitto")
    broker = EmbeddedBroker()
    asyncio.run(broker.start())
    log = tmp_path / "serve.log"
    try:
        with open(log, "w") as flog:
            proc = subprocess.Popen(
                [sys.executable, "-m", "omnizip_stream.cli", "serve-mqtt", "--broker", broker.url, "--stream-id",
                 "term2", "--source", "synthetic", *TINY],
                stdin=subprocess.DEVNULL, stdout=flog, stderr=subprocess.STDOUT, env=_env())
            try:
                _wait_in_file(log, r"MQTT: questions on omnizip/term2/query", proc, LOAD_S)
                online = asyncio.run(_retained(broker.url, "omnizip/term2/status"))
                assert online["state"] == "online"
                # One status model: the sources' counters and "behind live" are in the published session stats.
                assert "source" in online["session"] and "window_lag_s" in online["session"]
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert code == 0, log.read_text()[-3000:]
        status = asyncio.run(_retained(broker.url, "omnizip/term2/status"))
        assert status["state"] == "offline" and status["reason"] == "shutdown"
    finally:
        asyncio.run(broker.stop())
