"""Embedded MQTT broker for single-machine demos: Debian's mosquitto on loopback, or amqtt in process.

Used when ``serve-mqtt`` gets no ``--broker``. Not for deployments: it listens on 127.0.0.1 only,
allows anonymous clients and keeps nothing on disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
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
    to user ``mosquitto`` and then be unable to read files in a private temp dir.
    """
    lines = ["per_listener_settings false", f"listener {port} {host}", "allow_anonymous true",
             "set_tcp_nodelay true", "persistence false", "log_dest stderr", "log_type error",
             "log_type warning", "log_type notice"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        lines.insert(0, "user root")
    return "\n".join(lines) + "\n" + extra


class EmbeddedBroker:
    """A broker on ``127.0.0.1:<port>``: mosquitto (MQTT 5 + 3.1.1) if installed, else amqtt (3.1.1 only).

    Args:
        port: TCP port, or None for a free one.
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

    def __init__(self, port: int | None = None, *, prefer: str = "mosquitto") -> None:
        if prefer not in ("mosquitto", "amqtt"):
            raise ValueError(f"prefer must be 'mosquitto' or 'amqtt', not {prefer!r}")
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.prefer = prefer
        self.kind: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._amqtt: Any = None

    @property
    def url(self) -> str:
        """Broker URL for :meth:`MqttConfig.from_url`."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def supports_v5(self) -> bool:
        """Whether the running broker speaks MQTT 5."""
        return self.kind == "mosquitto"

    async def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it accepts connections.

        Raises:
            BrokerUnavailableError: neither broker is available, or it did not come up.
        """
        binary = find_mosquitto() if self.prefer == "mosquitto" else None
        if binary is not None:
            await self._start_mosquitto(binary)
        else:
            try:
                import amqtt.broker  # noqa: F401
            except ImportError:
                raise BrokerUnavailableError(
                    "no MQTT broker to embed: install mosquitto (apt-get install mosquitto) or amqtt "
                    "(pip install amqtt), or pass --broker mqtt://HOST:PORT"
                ) from None
            await self._start_amqtt()
        logger.warning(
            "Started an EMBEDDED MQTT broker (%s%s) at %s for a single-machine demo; "
            "loopback only, anonymous, not persistent. Pass --broker mqtt://HOST:PORT to use a real one.",
            self.kind, "" if self.supports_v5 else ", MQTT 3.1.1 only", self.url,
        )
        return self

    async def _start_mosquitto(self, binary: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="omnizip-mosquitto-")
        conf = Path(self._tmp.name) / "mosquitto.conf"
        conf.write_text(mosquitto_config(self.port, host=self.host))
        log_path = Path(self._tmp.name) / "mosquitto.log"
        self._proc = await asyncio.to_thread(_spawn, [binary, "-c", str(conf)], log_path)
        self.kind = "mosquitto"
        deadline = time.monotonic() + 10.0
        while not await asyncio.to_thread(_port_open, self.host, self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                await self.stop()
                raise BrokerUnavailableError(f"mosquitto did not start on port {self.port}: {' | '.join(tail)}")
            await asyncio.sleep(0.02)

    async def _start_amqtt(self) -> None:
        from amqtt.broker import Broker

        cfg = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._amqtt = Broker(cfg)
        await self._amqtt.start()
        self.kind = "amqtt"

    async def stop(self) -> None:
        """Stop the broker (idempotent)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    await asyncio.to_thread(self._proc.wait, 5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    await asyncio.to_thread(self._proc.wait)
            self._proc = None
        if self._amqtt is not None:
            await self._amqtt.shutdown()
            self._amqtt = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> EmbeddedBroker:
        """Start (see :meth:`start`)."""
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        """Stop."""
        await self.stop()


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0
