"""Fixtures for the MQTT transport tests: mosquitto brokers (skip cleanly without it), fake service."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mqtt_helpers import FakeService, Mosquitto  # noqa: E402

from omnizip_stream.query.broker import find_mosquitto  # noqa: E402

NO_MOSQUITTO = "mosquitto is not installed (apt-get install mosquitto mosquitto-clients)"


@pytest.fixture(scope="session")
def mosquitto_bin() -> str:
    binary = find_mosquitto()
    if binary is None:
        pytest.skip(NO_MOSQUITTO)
    return binary


@pytest.fixture(scope="session")
def broker(mosquitto_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One plain anonymous broker for the whole session (tests use distinct stream ids)."""
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def broker_factory(mosquitto_bin: str, tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Start brokers private to one test (restarts, auth, ACL, TLS); all stopped at the end."""
    started: list[Mosquitto] = []

    def make(**kwargs: object) -> Mosquitto:
        workdir = tmp_path / f"broker{len(started)}"
        workdir.mkdir()
        b = Mosquitto(workdir, **kwargs)  # type: ignore[arg-type]
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def stream_id() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (IP SAN), made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-days", "2", "-subj", "/CN=omnizip-test-ca", "-keyout", "ca.key", "-out", "ca.crt")
    run("req", *ec, "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.crt")
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}
