"""Fixtures for the MQTT transport tests: a broker (mosquitto, else amqtt), private mosquittos, fake service.

Which broker a test gets:

- ``broker``: one shared broker for the session. mosquitto when installed, else the project's embedded
  amqtt broker (a pip dependency, MQTT 3.1.1 only), so the 3.1.1 request/response, bad input, rate
  limit and status tests run on a machine without apt packages. ``OMNIZIP_TEST_BROKER=amqtt`` (or
  ``mosquitto``) forces the choice. A test that uses ``broker`` but needs more says so with a marker
  and is skipped, with the reason, on amqtt:
  ``@pytest.mark.mqtt5`` (MQTT 5 properties: ResponseTopic, CorrelationData, session expiry) or
  ``@pytest.mark.mosquitto`` (mosquitto itself: persistence, restarts, its CLI clients).
- ``broker_factory`` / ``mosquitto_bin`` / ``secure_broker``: private mosquittos (restarts, ACL, TLS);
  skipped without mosquitto.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mqtt_helpers import V311_ONLY_URLS, FakeService, Mosquitto  # noqa: E402

from omnizip_stream.query.broker import EmbeddedBroker, find_mosquitto  # noqa: E402

NO_MOSQUITTO = "mosquitto is not installed (apt-get install mosquitto mosquitto-clients)"
NO_AMQTT = "neither mosquitto nor amqtt is installed (pip install -e '.[mqtt]')"
# marker -> why a test carrying it cannot run on the amqtt broker
NEEDS_MOSQUITTO = {
    "mqtt5": "needs MQTT 5 (ResponseTopic/CorrelationData/session expiry); amqtt speaks only 3.1.1 -- "
             "install mosquitto to run it",
    "mosquitto": "needs mosquitto itself (persistence, restarts, its CLI clients) -- install mosquitto to run it",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mqtt5: needs an MQTT 5 broker (mosquitto); skipped on amqtt")
    config.addinivalue_line("markers", "mosquitto: needs mosquitto itself; skipped on amqtt")


def selected_broker_kind() -> str:
    """``mosquitto`` or ``amqtt``: what the shared ``broker`` fixture runs (OMNIZIP_TEST_BROKER, else auto)."""
    choice = os.environ.get("OMNIZIP_TEST_BROKER", "auto")
    if choice not in ("auto", "mosquitto", "amqtt"):
        raise pytest.UsageError(f"OMNIZIP_TEST_BROKER must be auto, mosquitto or amqtt, not {choice!r}")
    if choice == "auto":
        return "mosquitto" if find_mosquitto() is not None else "amqtt"
    return choice




@pytest.fixture(scope="session")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto | EmbeddedBroker]:
    """The session's broker (see the module docstring); tests use distinct stream ids."""
    if selected_broker_kind() == "mosquitto":
        if find_mosquitto() is None:
            pytest.skip(NO_MOSQUITTO)
        b = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
        b.start()
        yield b
        b.stop()
        return
    if importlib.util.find_spec("amqtt") is None:
        pytest.skip(NO_AMQTT)
    embedded = asyncio.run(EmbeddedBroker(prefer="amqtt").start())  # a child process: outlives this loop
    V311_ONLY_URLS.add(embedded.url)
    yield embedded
    V311_ONLY_URLS.discard(embedded.url)
    asyncio.run(embedded.stop())


@pytest.fixture(scope="module")
def module_amqtt(shared_broker: Mosquitto | EmbeddedBroker) -> Iterator[EmbeddedBroker | None]:
    """On amqtt, a broker private to one test module (None on mosquitto).

    amqtt 0.12 hands a client's subscriptions to clients that connect later; a many-stream server subscribes
    ``omnizip/+/query``, so on the shared broker later tests' servers and clients would get each other's
    messages. Modules that run many-stream servers use this one (``broker`` overridden there).
    """
    if shared_broker.kind == "mosquitto":
        yield None
        return
    embedded = asyncio.run(EmbeddedBroker(prefer="amqtt").start())
    V311_ONLY_URLS.add(embedded.url)
    yield embedded
    V311_ONLY_URLS.discard(embedded.url)
    asyncio.run(embedded.stop())


@pytest.fixture(scope="session")
def mosquitto_bin() -> str:
    binary = find_mosquitto()
    if binary is None:
        pytest.skip(NO_MOSQUITTO)
    return binary


@pytest.fixture
def broker(request: pytest.FixtureRequest, shared_broker: Mosquitto | EmbeddedBroker) -> Mosquitto | EmbeddedBroker:
    """The shared plain anonymous broker; skips a test marked ``mqtt5``/``mosquitto`` when it is amqtt."""
    if shared_broker.kind != "mosquitto":
        for marker, why in NEEDS_MOSQUITTO.items():
            if request.node.get_closest_marker(marker) is not None:
                pytest.skip(why)
    return shared_broker


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
