"""HTTP API settings: the ``http:`` mapping of a server file and ``omnizip serve --http HOST:PORT``.

No web framework is imported here (the server file is parsed before anything heavy loads)::

    http:
      host: 127.0.0.1            # default; any other address needs an API key
      port: 8000
      api_key_file: api.key      # first line; relative to the server file (or env OMNIZIP_API_KEY)
      max_body_bytes: 1048576    # larger request bodies are refused (413, code too_long)

The API key is never read from the server file in clear text (``http.api_key`` is refused), like the
admin token. Binding a non-loopback address without a key is refused (one line, exit 2): an open
port on a network must not hand out the cameras' contents and the model to anyone who finds it.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omnizip_stream.server.config import read_secret_file

API_KEY_ENV = "OMNIZIP_API_KEY"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
_KEYS = ("host", "port", "api_key_file", "max_body_bytes", "events_interval_s")


@dataclass(frozen=True)
class HttpSettings:
    """Where and how the HTTP API is served.

    Attributes:
        host: bind address (``127.0.0.1`` by default; others need ``api_key``).
        port: TCP port (0: any free port).
        api_key: the Bearer key every ``/v1/`` and ``/metrics`` request must carry (None: no key;
            only allowed on a loopback address).
        max_body_bytes: largest request body accepted.
        events_interval_s: how often ``/v1/streams/{id}/events`` checks a stream's stats for changes.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = field(default=None, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    events_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError(f"http.host must be a host name or address, got {self.host!r}")
        if not _is_int(self.port) or not 0 <= self.port <= 65535:
            raise ValueError(f"http.port must be a whole number in [0, 65535], got {self.port!r}")
        if not _is_int(self.max_body_bytes) or not 1024 <= self.max_body_bytes <= 1 << 30:
            raise ValueError(f"http.max_body_bytes must be a whole number in [1024, 2**30], got {self.max_body_bytes!r}")
        if not (isinstance(self.events_interval_s, (int, float)) and not isinstance(self.events_interval_s, bool)
                and math.isfinite(self.events_interval_s) and self.events_interval_s > 0):
            raise ValueError(f"http.events_interval_s must be a positive number, got {self.events_interval_s!r}")

    @property
    def loopback(self) -> bool:
        """Whether ``host`` is only reachable from this machine."""
        return is_loopback(self.host)

    @property
    def url(self) -> str:
        """``http://HOST:PORT/`` (IPv6 hosts bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def check_bind(self) -> None:
        """Refuse a non-loopback bind without an API key (ValueError, one line)."""
        if not self.loopback and not self.api_key:
            raise ValueError(f"--http {self.host}:{self.port} is reachable from the network: set an API key "
                             f"(env {API_KEY_ENV}, or http.api_key_file in the server file), "
                             "or bind 127.0.0.1")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_http_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT``, ``PORT`` or ``HOST`` -> (host, port) (defaults 127.0.0.1, 8000).

    Raises:
        ValueError: one line.
    """
    raw = text.strip()
    host, port_text = DEFAULT_HOST, ""
    if raw.startswith("["):  # [::1]:8000
        end = raw.find("]")
        if end < 0:
            raise ValueError(f"--http {text!r}: unclosed '[' (use [::1]:8000)")
        host, rest = raw[1:end], raw[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"--http {text!r}: expected HOST:PORT")
        port_text = rest[1:]
    elif raw.isdigit():
        port_text = raw
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
        host = host or DEFAULT_HOST
    elif ":" in raw:  # a bare IPv6 address, no port
        try:
            host = str(ipaddress.IPv6Address(raw))
        except ValueError:
            raise ValueError(f"--http {text!r}: expected HOST:PORT (an IPv6 address with a port: [::1]:8000)") from None
    elif raw:
        host = raw
    if port_text == "":
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--http {text!r}: the port must be a number in [0, 65535]")
    return host, int(port_text)


def http_settings_from_mapping(raw: Any, file_path: Path | None = None, *,
                               environ: Mapping[str, str] | None = None) -> HttpSettings:
    """The ``http:`` mapping of a server file (``None`` or ``{}``: the defaults) -> :class:`HttpSettings`.

    Raises:
        ValueError: one line naming the key.
    """
    environ = os.environ if environ is None else environ
    raw = {} if raw is None or raw is True else raw
    if not isinstance(raw, Mapping):
        raise ValueError(f"http must be a mapping {{host, port, api_key_file, max_body_bytes}}, "
                         f"got a {type(raw).__name__}")
    if "api_key" in raw:
        raise ValueError("http.api_key: a key is not read from the config file in clear text; use "
                         f"http.api_key_file: PATH or the {API_KEY_ENV} environment variable")
    unknown = sorted(str(k) for k in raw if k not in _KEYS)
    if unknown:
        raise ValueError(f"unknown http key(s) {', '.join(repr(k) for k in unknown[:5])}; "
                         f"valid keys: {', '.join(_KEYS)}")
    values = {k: v for k, v in raw.items() if k != "api_key_file"}
    if raw.get("api_key_file") is not None:
        values["api_key"] = read_secret_file(raw["api_key_file"], file_path, "http.api_key_file")
    elif environ.get(API_KEY_ENV):
        values["api_key"] = environ[API_KEY_ENV].strip()
    return HttpSettings(**values)


def with_address(settings: HttpSettings | None, address: str | None, *,
                 environ: Mapping[str, str] | None = None) -> HttpSettings | None:
    """Apply ``--http HOST:PORT`` to the file's settings (None and no flag: HTTP is off)."""
    if address is None:
        return settings
    host, port = parse_http_address(address)
    base = settings if settings is not None else http_settings_from_mapping({}, environ=environ)
    return replace(base, host=host, port=port)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


__all__ = ["API_KEY_ENV", "HttpSettings", "http_settings_from_mapping", "is_loopback", "parse_http_address",
           "with_address"]
