"""Configuration of the MQTT query transport: broker address, credentials, TLS, limits, topics."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from omnizip_stream.credentials import redact_url, resolve_password
from omnizip_stream.query.routes import DEFAULT_MAX_REPLY_TOPIC_BYTES, RoutePolicy

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# paho does not disable Nagle; without this every reply waits for the peer's delayed ACK (~40 ms).
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
PROTOCOLS = ("5", "3.1.1")

# Stream ids and client ids become topic levels: no separators, wildcards or system prefixes.
_TOPIC_LEVEL_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:@\-]{1,128}$")


def parse_broker_url(url: str) -> dict[str, Any]:
    """Split ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...`` into config fields.

    Args:
        url: the broker URL. ``mqtt`` is plain TCP (default port 1883), ``mqtts`` is TLS (8883).
            IPv6 hosts go in brackets (``mqtt://[::1]:1883``). Percent-escapes in the user and
            password are decoded.

    Returns:
        A dict with ``host``, ``port``, ``tls`` and, when the URL has them, ``username`` and
        ``password``.

    Raises:
        ValueError: if the URL is not a valid ``mqtt://`` / ``mqtts://`` broker address.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("broker URL is empty; expected mqtt://HOST:PORT or mqtts://HOST:PORT")
    url = url.strip()
    shown = redact_url(url)  # errors never carry the password
    if "://" not in url:
        raise ValueError(f"broker URL {shown!r} has no scheme; expected mqtt://HOST:PORT or mqtts://HOST:PORT")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"broker URL {shown!r}: scheme must be mqtt or mqtts, not {parts.scheme!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL {shown!r}: only mqtt(s)://[user[:password]@]host[:port] is allowed")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"broker URL {shown!r}: port must be a number in 1..65535") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"broker URL {shown!r} has no host")
    out: dict[str, Any] = {
        "host": host,
        "port": port if port is not None else DEFAULT_PORTS[scheme],
        "tls": scheme == "mqtts",
    }
    if parts.username is not None:
        out["username"] = unquote(parts.username)
    if parts.password is not None:
        out["password"] = unquote(parts.password)
    return out


def cli_credentials(url: str, username: str | None, password: str | None,
                    password_file: str | None) -> dict[str, str | None]:
    """``username``/``password`` overrides for :meth:`MqttConfig.from_url` from the command-line flags.

    The password comes from ``--password-file``, ``--password``, the URL, or the
    ``OMNIZIP_MQTT_PASSWORD`` environment variable, in that order (see
    :func:`~omnizip_stream.credentials.resolve_password`; command-line passwords log a warning).

    Raises:
        ValueError: a bad URL, both ``password`` and ``password_file``, or an unreadable file.
    """
    fields = parse_broker_url(url)
    user = username if username is not None else fields.get("username")
    secret = resolve_password(password, password_file, url_has_password="password" in fields,
                              has_username=user is not None)
    return {"username": username, "password": secret}


@dataclass(frozen=True)
class MqttConfig:
    """Everything the MQTT query server (and the small query client) need to know.

    Build it with :meth:`from_url`. Topics are ``<topic_prefix>/<stream_id>/query`` (questions in),
    ``<topic_prefix>/<stream_id>/status`` (retained status) and, for the bundled client,
    ``<topic_prefix>/<stream_id>/reply/<client_id>`` (answers).

    Attributes:
        stream_id: the stream this server answers for; one topic level (letters, digits, ``_.-``).
        host: broker host name or IP address.
        port: broker TCP port.
        tls: connect with TLS (``mqtts://``).
        username: broker user name, or None for anonymous.
        password: broker password (needs ``username``).
        ca_file: PEM file of the CA(s) that signed the broker's certificate (TLS only); None
            uses the system CAs.
        cert_file: client certificate (PEM) for mutual TLS.
        key_file: private key of ``cert_file`` (PEM).
        tls_insecure: skip the host-name check of the broker certificate (the chain is still
            verified). Only for test brokers.
        client_id: MQTT client id. Fixed ids give persistent sessions; None means
            ``omnizip-<stream_id>`` for the server (and a random id for the query client).
        protocol: ``"5"`` (request/response properties) or ``"3.1.1"`` (``reply_to`` in the payload).
        qos: QoS of subscriptions and answers (1 = at least once, recommended).
        max_payload_bytes: larger request payloads are refused with ``too_long``.
        max_question_chars: longer questions are refused with ``too_long`` before the model sees them.
        default_max_new_tokens: used when a request does not give ``max_new_tokens``.
        max_new_tokens_limit: upper bound a request may ask for.
        rate_limit_per_s: sustained requests per second allowed per client; 0 disables the limit.
        rate_limit_burst: requests a client may send at once before the rate applies.
        max_concurrent_queries: queries handed to the session at the same time.
        max_queued_queries: accepted queries waiting for a slot; beyond that requests get ``busy``.
        query_timeout_s: a query still running after this long is answered with ``internal``.
        status_interval_s: period of the retained status update.
        keepalive_s: MQTT keepalive (the broker publishes the last will after 1.5x this of silence).
        session_expiry_s: how long the broker keeps the server's session (subscriptions and
            queued requests) while it is disconnected (MQTT 5; 3.1.1 sessions never expire).
        reconnect_min_s: first delay before reconnecting; doubles on every failure.
        reconnect_max_s: cap of the reconnect delay.
        max_outbox: answers waiting for the broker while disconnected; beyond that the oldest
            partial answers, then the oldest answers, are dropped (and counted).
        topic_prefix: first topic level (default ``omnizip``).
        reply_prefix: when set, replies are published only to topics under it (e.g. ``devices/``);
            requests routed elsewhere are refused. Without it any topic outside the service's own
            namespace is allowed (see :class:`~omnizip_stream.query.routes.RoutePolicy`).
        max_reply_topic_bytes: longest reply topic accepted (UTF-8 bytes; MQTT allows 65535).
    """

    stream_id: str
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    client_id: str | None = None
    protocol: str = "5"
    qos: int = 1
    max_payload_bytes: int = 16384
    max_question_chars: int = 2000
    default_max_new_tokens: int = 64
    max_new_tokens_limit: int = 512
    rate_limit_per_s: float = 1.0
    rate_limit_burst: int = 5
    max_concurrent_queries: int = 1
    max_queued_queries: int = 16
    query_timeout_s: float = 300.0
    status_interval_s: float = 5.0
    keepalive_s: int = 30
    session_expiry_s: int = 3600
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    max_outbox: int = 10_000
    topic_prefix: str = "omnizip"
    reply_prefix: str | None = None
    max_reply_topic_bytes: int = DEFAULT_MAX_REPLY_TOPIC_BYTES

    def __post_init__(self) -> None:
        """Validate every field; raises ValueError with a one-line reason."""
        if not isinstance(self.stream_id, str) or not _TOPIC_LEVEL_RE.match(self.stream_id):
            raise ValueError(
                f"stream_id {self.stream_id!r} must be 1-128 characters of letters, digits, '_', '.' or '-' "
                "(it becomes an MQTT topic level)"
            )
        if not isinstance(self.topic_prefix, str) or not _TOPIC_LEVEL_RE.match(self.topic_prefix):
            raise ValueError(f"topic_prefix {self.topic_prefix!r} must be one topic level of letters, digits, '_.-'")
        if not isinstance(self.host, str) or not self.host or any(c.isspace() for c in self.host):
            raise ValueError(f"broker host {self.host!r} is not a host name or IP address")
        _check_int(self.port, "port", 1, 65535)
        if self.password is not None and self.username is None:
            raise ValueError("a broker password was given without a username")
        tls_files = {"ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file}
        if not self.tls and (any(v is not None for v in tls_files.values()) or self.tls_insecure):
            raise ValueError("TLS options (CA file, client certificate, insecure) need an mqtts:// broker URL")
        for name, path in tls_files.items():
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name} {path!r} does not exist or is not a file")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mutual TLS needs both a client certificate and its key")
        if self.client_id is not None and not _CLIENT_ID_RE.match(self.client_id):
            raise ValueError(
                f"client_id {self.client_id!r} must be 1-128 characters of letters, digits or '_.:@-'"
            )
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {self.protocol!r}")
        if self.qos not in (0, 1, 2) or isinstance(self.qos, bool):
            raise ValueError(f"qos must be 0, 1 or 2, not {self.qos!r}")
        _check_int(self.max_payload_bytes, "max_payload_bytes", 64, 256 * 1024 * 1024)
        _check_int(self.max_question_chars, "max_question_chars", 1, 10_000_000)
        _check_int(self.max_new_tokens_limit, "max_new_tokens_limit", 1, 1_000_000)
        _check_int(self.default_max_new_tokens, "default_max_new_tokens", 1, self.max_new_tokens_limit)
        _check_number(self.rate_limit_per_s, "rate_limit_per_s", 0.0)
        _check_int(self.rate_limit_burst, "rate_limit_burst", 1, 1_000_000)
        _check_int(self.max_concurrent_queries, "max_concurrent_queries", 1, 1024)
        _check_int(self.max_queued_queries, "max_queued_queries", 0, 1_000_000)
        _check_number(self.query_timeout_s, "query_timeout_s", 0.0, strictly=True)
        _check_number(self.status_interval_s, "status_interval_s", 0.0, strictly=True)
        _check_int(self.keepalive_s, "keepalive_s", 1, 65535)
        _check_int(self.session_expiry_s, "session_expiry_s", 0, 2**32 - 1)
        _check_number(self.reconnect_min_s, "reconnect_min_s", 0.0, strictly=True)
        _check_number(self.reconnect_max_s, "reconnect_max_s", 0.0, strictly=True)
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(
                f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_min_s ({self.reconnect_min_s})"
            )
        _check_int(self.max_outbox, "max_outbox", 1, 10_000_000)
        self.route_policy()  # validates reply_prefix and max_reply_topic_bytes
        self.ssl_context()  # a CA file that is not PEM or a certificate that does not match its key fails here

    @classmethod
    def from_url(cls, url: str, *, stream_id: str, **overrides: Any) -> MqttConfig:
        """Build a config from a broker URL plus keyword overrides.

        Args:
            url: ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...``.
            stream_id: the stream to serve (or, for the client, to query).
            **overrides: any other field; ``username``/``password`` given here win over the URL's.
                None values are ignored, so CLI flags that were not given can be passed through.

        Raises:
            ValueError: for a bad URL, an unknown field name or an invalid value.
        """
        fields = parse_broker_url(url)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown MQTT option(s): {', '.join(unknown)}")
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(stream_id=stream_id, **fields)

    @property
    def url(self) -> str:
        """The broker URL without credentials, for logs."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def route_policy(self) -> RoutePolicy:
        """Where this server may publish replies (topic-name rules and confinement)."""
        return RoutePolicy(self.topic_prefix, self.stream_id, self.reply_prefix, self.max_reply_topic_bytes)

    @property
    def query_topic(self) -> str:
        """Topic the server subscribes to for questions."""
        return f"{self.topic_prefix}/{self.stream_id}/query"

    @property
    def status_topic(self) -> str:
        """Retained status topic (online/offline and live counters)."""
        return f"{self.topic_prefix}/{self.stream_id}/status"

    def reply_topic(self, client_id: str) -> str:
        """Reply topic the bundled client uses for answers addressed to ``client_id``."""
        return f"{self.topic_prefix}/{self.stream_id}/reply/{client_id}"

    @property
    def server_client_id(self) -> str:
        """Fixed client id of the server (persistent session across reconnects)."""
        return self.client_id or f"omnizip-{self.stream_id}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS context for an ``mqtts://`` broker (None for plain TCP).

        Raises:
            ValueError: if a CA, certificate or key file cannot be loaded.
        """
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"CA file {self.ca_file!r} is not a PEM certificate ({_ssl_reason(exc)})") from None
        if self.cert_file is not None:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (ssl.SSLError, OSError) as exc:
                reason = _ssl_reason(exc)
                if "KEY_VALUES_MISMATCH" in str(exc):
                    raise ValueError(f"client certificate {self.cert_file!r} and key {self.key_file!r} do not "
                                     "match (the key is not the certificate's private key)") from None
                raise ValueError(f"cannot load the client certificate {self.cert_file!r} / key "
                                 f"{self.key_file!r}: not PEM, or a key with a passphrase ({reason})") from None
        if self.tls_insecure:
            ctx.check_hostname = False
        return ctx

    def redacted(self) -> dict[str, Any]:
        """Return the config as a dict with the password hidden (for logs and result files)."""
        out = dataclasses.asdict(self)
        if out["password"] is not None:
            out["password"] = "***"
        return out


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return str(reason).replace("_", " ").lower()


def _check_int(value: Any, name: str, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, not {value!r}")


def _check_number(value: Any, name: str, lo: float, *, strictly: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok:
        ok = value > lo if strictly else value >= lo
    if not ok or value == float("inf"):
        raise ValueError(f"{name} must be a finite number {'>' if strictly else '>='} {lo}, not {value!r}")
