"""Wrong TLS files and the wrong scheme for a port: one-line error, exit 2, no traceback, before the model loads."""

from __future__ import annotations

import subprocess
import sys

import pytest

from omnizip_stream.query.broker import free_port

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def tls_broker(mosquitto_bin, tls_files, tmp_path_factory):
    """One mosquitto with a plain listener and a TLS listener."""
    from mqtt_helpers import Mosquitto

    tls_port = free_port()
    b = Mosquitto(tmp_path_factory.mktemp("tlsbroker"),
                  extra_listeners=(f"listener {tls_port} 127.0.0.1\ncafile {tls_files['ca']}\n"
                                   f"certfile {tls_files['cert']}\nkeyfile {tls_files['key']}\n"))
    b.start(ports=(tls_port,))
    b.tls_port = tls_port
    yield b
    b.stop()


@pytest.fixture
def serve_mqtt(capsys):
    """``omnizip serve-mqtt ... --source synthetic --model tiny --duration 5`` in process: (exit code, stderr)."""
    from omnizip_stream.cli import main

    def run(*args: str) -> tuple[int, str]:
        code = main(["serve-mqtt", "--stream-id", "cam1", "--source", "synthetic", "--model", "tiny",
                     "--duration", "5", *args])  # an exception here (a traceback) fails the test
        return code, capsys.readouterr().err

    return run


def one_line_error(result: tuple[int, str]) -> str:
    code, err = result
    assert code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("omnizip serve-mqtt: error:")]
    assert len(errors) == 1, err
    return errors[0]


def test_ca_file_that_is_not_pem(serve_mqtt, tls_broker, tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("this is not a certificate\n")
    line = one_line_error(serve_mqtt("--broker", f"mqtts://127.0.0.1:{tls_broker.tls_port}", "--cafile", str(bad)))
    assert "is not a PEM certificate" in line


def test_client_certificate_and_key_that_do_not_match(serve_mqtt, tls_broker, tls_files, tmp_path):
    other_key = tmp_path / "other.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out",
                    str(other_key)], check=True, capture_output=True)
    line = one_line_error(serve_mqtt("--broker", f"mqtts://127.0.0.1:{tls_broker.tls_port}", "--cafile",
                                     str(tls_files["ca"]), "--cert", str(tls_files["cert"]), "--key", str(other_key)))
    assert "do not match" in line


def test_plain_url_to_a_tls_port(serve_mqtt, tls_broker):
    line = one_line_error(serve_mqtt("--broker", f"mqtt://127.0.0.1:{tls_broker.tls_port}"))
    assert f"speaks TLS on port {tls_broker.tls_port}: use mqtts://127.0.0.1:{tls_broker.tls_port}" in line


def test_tls_url_to_a_plain_port(serve_mqtt, tls_broker, tls_files):
    line = one_line_error(serve_mqtt("--broker", f"mqtts://127.0.0.1:{tls_broker.port}", "--cafile",
                                     str(tls_files["ca"])))
    assert f"port {tls_broker.port} speaks plain MQTT, not TLS: use mqtt://127.0.0.1:{tls_broker.port}" in line


def test_tls_without_the_private_ca(serve_mqtt, tls_broker):
    line = one_line_error(serve_mqtt("--broker", f"mqtts://127.0.0.1:{tls_broker.tls_port}"))
    assert "certificate not trusted" in line and "--cafile" in line


def test_nothing_listening(serve_mqtt):
    line = one_line_error(serve_mqtt("--broker", f"mqtt://127.0.0.1:{free_port()}"))
    assert "cannot connect to mqtt://127.0.0.1:" in line and "refused" in line


def test_query_script_names_the_scheme_mismatch(tls_broker):
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "mqtt_query.py"
    proc = subprocess.run([sys.executable, str(script), "--broker", f"mqtt://127.0.0.1:{tls_broker.tls_port}",
                           "--stream-id", "cam1", "--timeout", "5", "q"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "speaks TLS" in proc.stderr
