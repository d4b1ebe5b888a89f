"""One quick look at the broker before serving: is it there, and does it speak what the URL says.

``mqtt://`` to a TLS port hangs until the broker gives up on the handshake, and ``mqtts://`` to a
plain port resets; both look like a flaky network to the MQTT client, which would retry forever.
:func:`check_broker` tells them apart in a second or two so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import socket
import ssl
import uuid

from omnizip_stream.query.mqtt_config import MqttConfig

_CONNACK = 0x20
_TLS_RECORD_TYPES = (0x15, 0x16)  # alert, handshake: what a TLS listener sends back to plain bytes


class BrokerCheckError(ValueError):
    """The broker cannot be used as configured (one line, credentials never included)."""


def check_broker(config: MqttConfig, timeout_s: float = 3.0) -> None:
    """Connect once and check that the port speaks plain MQTT (``mqtt://``) or TLS (``mqtts://``).

    Only sure conclusions raise: a refused or unreachable port, TLS on a plain URL, plain MQTT on
    a TLS URL, an untrusted certificate. A slow broker passes (the client's own timeouts apply).

    Args:
        config: broker address and TLS settings (credentials are not sent).
        timeout_s: per-step socket timeout.

    Raises:
        BrokerCheckError: with the reason and what to change.
    """
    url = config.url
    if config.tls:
        _check_tls(config, url, timeout_s)
    elif _speaks_tls_not_mqtt(config.host, config.port, url, timeout_s):
        raise BrokerCheckError(f"broker {url} speaks TLS on port {config.port}: use "
                               f"mqtts://{_hostport(config)} (and --cafile if its CA is private)")


def _check_tls(config: MqttConfig, url: str, timeout_s: float) -> None:
    ctx = config.ssl_context()
    assert ctx is not None
    sock = _connect(config.host, config.port, url, timeout_s)
    try:
        with ctx.wrap_socket(sock, server_hostname=config.host):
            return
    except ssl.SSLCertVerificationError as exc:
        raise BrokerCheckError(f"broker {url}: TLS certificate not trusted ({exc.verify_message}); pass the CA "
                               "that signed it (--cafile)") from None
    except (ssl.SSLError, OSError) as exc:
        handshake_error = exc
    finally:
        sock.close()
    if _plain_connack(config.host, config.port, url, timeout_s):
        raise BrokerCheckError(f"broker {url}: port {config.port} speaks plain MQTT, not TLS: use "
                               f"mqtt://{_hostport(config)} or the broker's TLS port")
    raise BrokerCheckError(f"broker {url}: TLS handshake failed ({_reason(handshake_error)})")


def _speaks_tls_not_mqtt(host: str, port: int, url: str, timeout_s: float) -> bool:
    sock = _connect(host, port, url, timeout_s)
    try:
        sock.sendall(_connect_packet())
        first = sock.recv(1)
    except OSError:
        first = b""
    finally:
        sock.close()
    if first and first[0] >> 4 == _CONNACK >> 4:
        return False
    if first and first[0] in _TLS_RECORD_TYPES:
        return True
    # silence, a reset or something else: a TLS listener waits for a ClientHello, so try one
    sock = _connect(host, port, url, timeout_s)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with ctx.wrap_socket(sock, server_hostname=host):
            return True
    except (ssl.SSLError, OSError):
        return False
    finally:
        sock.close()


def _plain_connack(host: str, port: int, url: str, timeout_s: float) -> bool:
    try:
        sock = _connect(host, port, url, timeout_s)
    except BrokerCheckError:
        return False
    try:
        sock.sendall(_connect_packet())
        first = sock.recv(1)
    except OSError:
        return False
    finally:
        sock.close()
    return bool(first) and first[0] >> 4 == _CONNACK >> 4


def _connect(host: str, port: int, url: str, timeout_s: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        raise BrokerCheckError(f"cannot connect to {url}: {_reason(exc)}") from None


def _connect_packet() -> bytes:
    """A minimal MQTT 3.1.1 CONNECT (clean session, random client id, no credentials)."""
    client_id = f"omnizip-check-{uuid.uuid4().hex[:8]}".encode()
    var_header = b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol name, level 4, clean session, keepalive 10 s
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = var_header + payload
    return bytes([0x10, len(body)]) + body


def _hostport(config: MqttConfig) -> str:
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"{host}:{config.port}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower() if exc.strerror else str(exc)
    return str(exc) or type(exc).__name__
