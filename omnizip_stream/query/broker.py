"""Embedded MQTT broker for single-machine demos: Debian's mosquitto on loopback, or amqtt (a pip dependency).

Used when ``serve-mqtt`` gets no ``--broker``. Not for deployments: it listens on 127.0.0.1 only,
allows anonymous clients and keeps nothing on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MOSQUITTO_FALLBACK_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BrokerUnavailableError(RuntimeError):
    """No broker could be started (neither mosquitto nor amqtt is installed, or it failed to start)."""


def find_mosquitto() -> str | None:
    """Path of the ``mosquitto`` binary (PATH first, then /usr/sbin), or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for path in MOSQUITTO_FALLBACK_PATHS:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def mosquitto_config(port: int, *, host: str = "127.0.0.1", extra: str = "") -> str:
    """Text of a minimal mosquitto.conf for a loopback test/demo broker.

    ``set_tcp_nodelay true`` matters: without it a request/response round trip waits ~40 ms on
    Nagle + delayed ACK. ``user root`` is added when running as root, because mosquitto would drop
    to user ``mosquitto`` and then be unable to read files in a private temp dir (tests' brokers).
    """
    lines = ["per_listener_settings false", f"listener {port} {host}", "allow_anonymous true",
             "set_tcp_nodelay true", "persistence false", "log_dest stderr", "log_type error",
             "log_type warning", "log_type notice"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        lines.insert(0, "user root")
    return "\n".join(lines) + "\n" + extra


class EmbeddedBroker:
    """A broker on ``127.0.0.1:<port>``: mosquitto (MQTT 5 + 3.1.1) if installed, else amqtt (3.1.1 only).

    Both run as child processes in their own session (a Ctrl-C in the terminal reaches only omnizip,
    which stops its MQTT server first and the broker last). Nothing is written to disk (mosquitto reads
    its config from a pipe; logs go to an unlinked temp file). :meth:`stop` leaves no process behind,
    also when the task running it is cancelled; an interpreter exit without
    :meth:`stop` kills the broker too. If omnizip is killed outright, the amqtt child exits when its
    stdin closes and mosquitto gets SIGTERM from the kernel (``setpriv --pdeathsig``, where available).

    Args:
        port: TCP port, or None for a free one (the start is retried on another port if it was taken
            in the meantime). A given port that is in use is an error.
        prefer: ``"mosquitto"`` (default; falls back to amqtt), or ``"amqtt"``.

    Attributes:
        kind: ``"mosquitto"`` or ``"amqtt"`` once started.
        supports_v5: False for amqtt (use ``protocol="3.1.1"`` then).
        url: ``mqtt://127.0.0.1:<port>``.

    Example::

        async with EmbeddedBroker() as broker:
            config = MqttConfig.from_url(broker.url, stream_id="cam1",
                                         protocol="5" if broker.supports_v5 else "3.1.1")
    """

    START_TIMEOUT_S = 20.0

    def __init__(self, port: int | None = None, *, prefer: str = "mosquitto") -> None:
        if prefer not in ("mosquitto", "amqtt"):
            raise ValueError(f"prefer must be 'mosquitto' or 'amqtt', not {prefer!r}")
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"broker port must be 1..65535, not {port}")
        self.host = "127.0.0.1"
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.prefer = prefer
        self.kind: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def url(self) -> str:
        """Broker URL for :meth:`MqttConfig.from_url`."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def supports_v5(self) -> bool:
        """Whether the running broker speaks MQTT 5."""
        return self.kind == "mosquitto"

    @property
    def pid(self) -> int | None:
        """Process id of the running broker, or None."""
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it accepts connections.

        Raises:
            BrokerUnavailableError: neither broker is available, the port is taken, or it did not come up.
        """
        binary = find_mosquitto() if self.prefer == "mosquitto" else None
        have_amqtt = importlib.util.find_spec("amqtt") is not None
        if binary is None and not have_amqtt:
            raise BrokerUnavailableError(
                "no MQTT broker to embed: install mosquitto (apt-get install mosquitto) or amqtt "
                "(pip install amqtt), or pass --broker mqtt://HOST:PORT"
            )
        for attempt in range(3):
            if not port_is_free(self.host, self.port):
                if self._fixed_port:
                    raise BrokerUnavailableError(
                        f"cannot start the embedded MQTT broker: port {self.port} on {self.host} is in use "
                        "(choose another with --broker-port, or pass --broker mqtt://HOST:PORT)")
                self.port = free_port()
            try:
                if binary is not None:
                    await self._start_mosquitto(binary)
                else:
                    await self._start_amqtt()
                break
            except BrokerUnavailableError as exc:
                if port_is_free(self.host, self.port):  # not a port clash: the broker itself failed
                    if binary is None or not have_amqtt or attempt == 2:
                        raise
                    logger.warning("mosquitto did not start (%s); using amqtt instead", exc)
                    binary = None
                    continue
                if self._fixed_port or attempt == 2:
                    raise
                self.port = free_port()  # someone took the free port between the check and the bind
        logger.warning(
            "Started an EMBEDDED MQTT broker (%s%s) at %s for a single-machine demo; "
            "loopback only, anonymous, not persistent. Pass --broker mqtt://HOST:PORT to use a real one.",
            self.kind, "" if self.supports_v5 else ", MQTT 3.1.1 only", self.url,
        )
        return self

    async def _start_mosquitto(self, binary: str) -> None:
        # The config goes through a pipe (-c /dev/stdin): no file on disk.
        argv = [*_die_with_parent(), binary, "-c", "/dev/stdin"]
        await self._start_child("mosquitto", argv, mosquitto_config(self.port, host=self.host).encode())

    async def _start_amqtt(self) -> None:
        # Run by path (it imports only amqtt and the standard library): works whatever sys.path the parent has.
        argv = [sys.executable, str(Path(__file__).with_name("amqtt_child.py")), self.host, str(self.port)]
        await self._start_child("amqtt", argv, None)

    async def _start_child(self, kind: str, argv: list[str], config: bytes | None) -> None:
        """Spawn the broker; mosquitto gets ``config`` on stdin, amqtt keeps stdin open and says ``ready``."""
        with tempfile.TemporaryFile() as log:  # anonymous: nothing stays on disk, whatever happens
            # Spawned synchronously (a few ms): no await between the fork and _track, so a cancellation
            # cannot leave an untracked child behind.
            proc = _spawn(argv, log, says_ready=config is None)
            self._track(proc)
            self.kind = kind

            def read_log() -> str:
                log.seek(0)
                return log.read().decode(errors="replace")

            try:
                assert proc.stdin is not None
                if config is not None:
                    with contextlib.suppress(OSError):  # it may have exited already: _wait_listening says why
                        proc.stdin.write(config)
                        proc.stdin.close()
                else:
                    try:
                        ready = await asyncio.wait_for(asyncio.to_thread(_read_ready, proc), self.START_TIMEOUT_S)
                    except TimeoutError:
                        ready = False
                    if not ready:
                        tail = " | ".join(read_log().strip().splitlines()[-1:])
                        raise BrokerUnavailableError(f"amqtt did not start on port {self.port}: {tail or 'no reply'}")
                await self._wait_listening(read_log)
            except BaseException:
                await self.stop()
                raise

    def _track(self, proc: subprocess.Popen[bytes]) -> None:
        """Remember the child and make sure it dies with the interpreter even if stop() is never awaited."""
        self._proc = proc
        self._finalizer = weakref.finalize(self, _kill_now, proc)

    async def _wait_listening(self, read_log: Any) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while not await asyncio.to_thread(_port_open, self.host, self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = " | ".join(read_log().strip().splitlines()[-3:])
                raise BrokerUnavailableError(f"{self.kind} did not start on port {self.port}: {tail}")
            await asyncio.sleep(0.02)
        if self._proc.poll() is not None:  # the port answered, but not our broker (it exited)
            raise BrokerUnavailableError(f"{self.kind} exited at start; port {self.port} is used by another program")

    async def stop(self) -> None:
        """Stop the broker (idempotent, safe to cancel)."""
        proc, finalizer = self._proc, self._finalizer
        self._proc, self._finalizer = None, None
        if finalizer is not None:
            finalizer.detach()
        if proc is not None:
            _ask_to_exit(proc)
            # The reaping thread finishes (killing after 5 s) even if this await is cancelled.
            await asyncio.shield(asyncio.ensure_future(asyncio.to_thread(_reap, proc, 5.0)))

    async def __aenter__(self) -> EmbeddedBroker:
        """Start (see :meth:`start`)."""
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        """Stop."""
        await self.stop()


def _read_ready(proc: subprocess.Popen[bytes]) -> bool:
    """Block until the amqtt child prints ``ready`` (True) or exits (False)."""
    assert proc.stdout is not None
    return proc.stdout.readline().strip() == b"ready"


def _ask_to_exit(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()


def _reap(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _kill_now(proc: subprocess.Popen[bytes]) -> None:
    """Last resort at interpreter exit / garbage collection: no broker may outlive us."""
    _ask_to_exit(proc)
    _reap(proc, 2.0)


def _die_with_parent() -> list[str]:
    """``setpriv --pdeathsig TERM --`` (util-linux, Linux) where available, else nothing.

    The kernel then stops mosquitto if omnizip dies without cleaning up (SIGKILL). The signal is tied
    to the thread that spawns: spawn from the event loop's thread, not from a worker.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def _spawn(argv: list[str], log: Any, *, says_ready: bool) -> subprocess.Popen[bytes]:
    """Start a broker in its own session, output to ``log``; stdout piped when it ``says_ready`` (amqtt)."""
    if says_ready:
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                start_new_session=True)
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on (or holds) ``host:port`` right now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0
