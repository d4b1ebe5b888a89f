"""Server configuration: one model, the defaults of every stream, and the list of streams.

A server file (``omnizip serve --config configs/server.yaml``)::

    model: tiny                 # every StreamConfig key at the top level: the defaults of every stream
    rho_video: 0.6
    server:                     # server settings (ServerSettings)
      max_batch: 8
      prepare_threads: 1        # frames resized off the model thread (default: by core count; 0: none)
      kv_budget_mb: 4096
      admin_token_file: admin.token   # relative to this file; or the OMNIZIP_ADMIN_TOKEN variable
    streams:
      - {id: door, source: "rtsp://cam:secret@10.0.0.5/stream", rho_video: 0.7}
      - {id: kitchen, source: "camera:1"}
      - {id: demo, source: "synthetic:seed=3", loop: true}

Each stream is ``{id, source, <StreamConfig overrides>, <source options>}``: the overrides go on top of
the defaults (``config_from_mapping(values, defaults)``); the source options are ``loop``, ``realtime``,
``max_side``, ``mic``, ``camera_size`` and ``duration_s`` (as ``omnizip stream``'s flags). Keys that
choose or load the one shared model (``model``, ``device``, ``dtype``, ``attn``, ``video_max_pixels``,
``torch_threads``) can only be set at the top level.

The admin token (authenticates adding and removing streams at run time) is never read from this file
in clear text: a file meant to be shared, copied and committed must not carry a secret. It comes from
``server.admin_token_file`` (first line; a relative path is relative to the config file), else from
the ``OMNIZIP_ADMIN_TOKEN`` environment variable; ``server.admin_token`` is refused.

Every mistake is one line naming the stream and the key (``ValueError``), before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnizip_stream.config import StreamConfig, config_from_mapping, parse_overrides, read_config_file

if TYPE_CHECKING:
    from omnizip_stream.http.settings import HttpSettings

ADMIN_TOKEN_ENV = "OMNIZIP_ADMIN_TOKEN"
MAX_STREAMS = 1024
# Keys that choose or load the shared model (and the process-wide thread count): top level only.
MODEL_KEYS = ("model", "device", "dtype", "attn", "video_max_pixels", "torch_threads")
# Per-stream source options (the flags of ``omnizip stream``) and their defaults.
SOURCE_KEYS = ("loop", "realtime", "max_side", "mic", "camera_size", "duration_s")


@dataclass(frozen=True)
class ServerSettings:
    """The ``server:`` mapping of a server file.

    Attributes:
        kv_budget_mb: one KV memory budget for all streams (None: only each stream's own caps).
        max_batch: most windows or questions of different streams run in one model call (1: one at a time).
        prepare_threads: threads that resize and patchify queued frames off the model thread
            (:mod:`~omnizip_stream.server.prepare`; None: by core count, 0: on the model thread).
        admin_token: the secret that authenticates adding/removing streams at run time (None: run-time
            changes are refused); from ``admin_token_file`` or ``OMNIZIP_ADMIN_TOKEN``, never the file.
        retry_min_s: first wait before re-opening a failed source; doubles on each failure in a row.
        retry_max_s: cap of that wait.
        max_source_retries: re-opens of a failed source before it is given up (state ``failed``);
            None retries forever.
        alerts_dir: where each stream's alert log goes (``<id>.alerts.jsonl``; None: ``$OMNIZIP_ALERTS_DIR``
            or ``~/.local/state/omnizip/alerts``).
    """

    kv_budget_mb: float | None = None
    max_batch: int = 8
    prepare_threads: int | None = None
    admin_token: str | None = field(default=None, repr=False)
    retry_min_s: float = 1.0
    retry_max_s: float = 60.0
    max_source_retries: int | None = None
    alerts_dir: str | None = None

    def __post_init__(self) -> None:
        if self.kv_budget_mb is not None and not (_is_number(self.kv_budget_mb) and self.kv_budget_mb > 0):
            raise ValueError(f"server.kv_budget_mb must be a positive number of MiB, got {self.kv_budget_mb!r}")
        if not _is_int(self.max_batch) or not 1 <= self.max_batch <= 1024:
            raise ValueError(f"server.max_batch must be a whole number in [1, 1024], got {self.max_batch!r}")
        if self.prepare_threads is not None and not (_is_int(self.prepare_threads) and 0 <= self.prepare_threads <= 64):
            raise ValueError(f"server.prepare_threads must be a whole number in [0, 64] or null, "
                             f"got {self.prepare_threads!r}")
        if not (_is_number(self.retry_min_s) and self.retry_min_s > 0):
            raise ValueError(f"server.retry_min_s must be a positive number of seconds, got {self.retry_min_s!r}")
        if not (_is_number(self.retry_max_s) and self.retry_max_s >= self.retry_min_s):
            raise ValueError(f"server.retry_max_s must be a number >= retry_min_s ({self.retry_min_s:g}), "
                             f"got {self.retry_max_s!r}")
        if self.max_source_retries is not None and not (_is_int(self.max_source_retries)
                                                        and self.max_source_retries >= 0):
            raise ValueError(f"server.max_source_retries must be a whole number >= 0 or null, "
                             f"got {self.max_source_retries!r}")


@dataclass(frozen=True)
class StreamSpec:
    """One stream of the server: its id, its source spec, its config and its source options.

    Attributes:
        id: the stream id (MQTT topic level: 1-128 letters, digits, ``_``, ``.``, ``-``).
        source: a source spec (``camera``, ``file:PATH``, ``rtsp://...``, ``synthetic:seed=3`` ...).
        config: the stream's :class:`StreamConfig` (the server defaults plus its overrides).
        loop: replay a file forever.
        realtime: pace files and synthetic media in real time (live); False: as fast as consumed.
        max_side: frames scaled at decode to this longer side (None: native).
        mic: microphone device for ``camera+mic`` / ``mic``.
        camera_size: camera capture size (``640x480``).
        duration_s: stop after this much stream time (None: when the source ends).
        watches: standing questions (``watches: [{question: ..., threshold: 0.5, debounce: 2,
            cooldown_s: 30, every_windows: 1}]``), :class:`~omnizip_stream.watch.spec.WatchSpec`.
    """

    id: str
    source: str
    config: StreamConfig = field(default_factory=StreamConfig)
    loop: bool = False
    realtime: bool = True
    max_side: int | None = 640
    mic: str | None = None
    camera_size: str | None = None
    duration_s: float | None = None
    watches: tuple[Any, ...] = ()  # WatchSpec: the stream's standing questions (omnizip_stream.watch)

    def __post_init__(self) -> None:
        check_stream_id(self.id)


@dataclass(frozen=True)
class ServerConfig:
    """A parsed server file: stream defaults (and the model), server settings, the streams."""

    defaults: StreamConfig = field(default_factory=StreamConfig)
    server: ServerSettings = field(default_factory=ServerSettings)
    streams: tuple[StreamSpec, ...] = ()
    http: HttpSettings | None = None  # the ``http:`` mapping (None: no HTTP API unless ``--http`` is given)


def check_stream_id(stream_id: Any) -> str:
    """The stream id if valid: the same rule as MQTT stream ids (it becomes a topic level).

    Raises:
        ValueError: one line with the rule.
    """
    from omnizip_stream.query.mqtt_config import _TOPIC_LEVEL_RE

    if not isinstance(stream_id, str) or not _TOPIC_LEVEL_RE.match(stream_id):
        shown = repr(stream_id) if len(repr(stream_id)) <= 60 else repr(stream_id)[:60] + "..."
        raise ValueError(f"stream id {shown} must be 1-128 characters of letters, digits, '_', '.' or '-' "
                         "(it becomes an MQTT topic level)")
    from omnizip_stream.query.streams import SERVER_ID

    if stream_id == SERVER_ID:
        raise ValueError(f"stream id {SERVER_ID!r} is reserved for the server's own MQTT topics; choose another id")
    return stream_id


def stream_spec_from_mapping(item: Any, defaults: StreamConfig, *, where: str | None = None) -> StreamSpec:
    """A :class:`StreamSpec` from one ``streams:`` entry (also an add request over MQTT).

    Args:
        item: ``{id, source, <StreamConfig overrides>, <source options>}``.
        defaults: the server's stream defaults (its model).
        where: how to name the entry in errors before its id is known (``streams[2]``).

    Raises:
        ValueError: one line naming the stream and the key (bad or missing id, missing source,
            unknown key, a model key, a bad value).
    """
    label = where or "stream"
    if not isinstance(item, Mapping):
        raise ValueError(f"{label} must be a mapping {{id: ..., source: ..., <overrides>}}, "
                         f"got a {type(item).__name__}")
    if "id" not in item:
        raise ValueError(f"{label}: missing key 'id'")
    try:
        stream_id = check_stream_id(item["id"])
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from None
    label = f"stream {stream_id!r}"
    source = item.get("source")
    if source is None:
        raise ValueError(f"{label}: missing key 'source' (camera, file:PATH, a URL or synthetic)")
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"{label}: source must be a source spec string, got {source!r}")
    for key in item:
        if key in MODEL_KEYS:
            raise ValueError(f"{label}: {key!s} cannot be set per stream (one model serves every stream); "
                             "set it at the top level of the file")
    from omnizip_stream.sources import SourceError, parse_spec

    try:
        parse_spec(source)
    except SourceError as exc:
        raise ValueError(f"{label}: source: {exc}") from None
    options = {k: item[k] for k in SOURCE_KEYS if k in item}
    overrides = {k: v for k, v in item.items() if k not in ("id", "source", "watches", *SOURCE_KEYS)}
    try:
        from omnizip_stream.watch.setup import watch_specs_from_list

        config = config_from_mapping(overrides, defaults)
        return StreamSpec(id=stream_id, source=source.strip(), config=config, **_source_options(options),
                          watches=watch_specs_from_list(item.get("watches")))
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from None


def load_server_config(path: str | Path, overrides: Mapping[str, Any] | Sequence[str] | None = None, *,
                       environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Read a server file (format in the module docstring).

    Args:
        path: the YAML file (or the name of a shipped preset, e.g. ``server``).
        overrides: ``key=value`` strings or a mapping, applied to the stream defaults (they replace the
            file's top-level values; a stream's own keys still win).
        environ: the environment (default ``os.environ``), for ``OMNIZIP_ADMIN_TOKEN``.

    Raises:
        ValueError: one line naming the stream and key, or the server setting.
    """
    from omnizip_stream.config import resolve_config_path
    from omnizip_stream.presets import available_presets

    try:
        file_path = resolve_config_path(path)
    except ValueError:
        raise ValueError(f"server file {str(path)!r} does not exist; shipped server files: "
                         f"{', '.join(available_presets(server=True))}") from None
    data = dict(read_config_file(file_path))
    streams_raw = data.pop("streams", None)
    server_raw = data.pop("server", None)
    has_http, http_raw = "http" in data, data.pop("http", None)
    if isinstance(overrides, Mapping):
        extra: dict[str, Any] = dict(overrides)
    else:
        extra = parse_overrides(list(overrides or []))
    try:
        defaults = config_from_mapping(extra, config_from_mapping(data))  # the overrides win over the file
    except ValueError as exc:
        if str(exc).startswith("unknown config key"):
            raise ValueError(f"{exc.args[0]}; and the server keys: server, streams, http") from None
        raise
    server = _server_settings(server_raw, file_path, os.environ if environ is None else environ)
    http = None
    if has_http:
        from omnizip_stream.http.settings import http_settings_from_mapping

        http = http_settings_from_mapping(http_raw, file_path, environ=environ)
    if streams_raw is None:
        raise ValueError(f"{file_path}: no 'streams:' list; a server file lists its streams, "
                         "e.g. streams: [{id: door, source: camera}]")
    if not isinstance(streams_raw, list):
        raise ValueError(f"streams must be a list of {{id: ..., source: ...}}, got a {type(streams_raw).__name__}")
    if len(streams_raw) > MAX_STREAMS:
        raise ValueError(f"streams lists {len(streams_raw)} streams; at most {MAX_STREAMS} are served")
    specs: list[StreamSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(streams_raw):
        spec = stream_spec_from_mapping(item, defaults, where=f"streams[{i}]")
        if spec.id in seen:
            raise ValueError(f"stream {spec.id!r}: duplicate id (streams[{i}]); every stream needs its own id")
        seen.add(spec.id)
        specs.append(spec)
    return ServerConfig(defaults=defaults, server=server, streams=tuple(specs), http=http)


def _server_settings(raw: Any, file_path: Path, environ: Mapping[str, str]) -> ServerSettings:
    """The ``server:`` mapping -> :class:`ServerSettings` (the admin token from its file or the environment)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"server must be a mapping of settings, got a {type(raw).__name__}")
    if "admin_token" in raw:
        raise ValueError("server.admin_token: a token is not read from the config file in clear text; use "
                         f"server.admin_token_file: PATH or the {ADMIN_TOKEN_ENV} environment variable")
    known = [f.name for f in dataclasses.fields(ServerSettings) if f.name != "admin_token"] + ["admin_token_file"]
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise ValueError(f"unknown server key(s) {', '.join(repr(k) for k in unknown[:5])}; "
                         f"valid keys: {', '.join(sorted(known))}")
    values = {k: v for k, v in raw.items() if k != "admin_token_file"}
    token_file = raw.get("admin_token_file")
    if token_file is not None:
        values["admin_token"] = _read_token(token_file, file_path)
    elif environ.get(ADMIN_TOKEN_ENV):
        values["admin_token"] = environ[ADMIN_TOKEN_ENV]
    return ServerSettings(**values)


def _read_token(token_file: Any, file_path: Path) -> str:
    return read_secret_file(token_file, file_path, "server.admin_token_file")


def read_secret_file(secret_file: Any, file_path: Path | None, key: str) -> str:
    """The first line of ``secret_file`` (relative to the server file's folder); ``key`` names it in errors."""
    if not isinstance(secret_file, str) or not secret_file:
        raise ValueError(f"{key} must be a file path, got {secret_file!r}")
    path = Path(os.path.expanduser(secret_file))
    if not path.is_absolute() and file_path is not None:
        path = file_path.parent / path
    try:
        raw = path.read_bytes()[: 64 * 1024]
        token = raw.decode("utf-8").splitlines()[0].strip() if raw.strip() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{key} {str(path)!r} cannot be read: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise ValueError(f"{key} {str(path)!r} is empty")
    return token


def _source_options(options: dict[str, Any]) -> dict[str, Any]:
    """Type-check the per-stream source options (``loop``, ``max_side`` ...)."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key in ("loop", "realtime"):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false, got {value!r}")
        elif key == "max_side":
            if value is not None and (not _is_int(value) or not 16 <= value <= 8192):
                raise ValueError(f"max_side must be a whole number in [16, 8192] or null, got {value!r}")
        elif key == "duration_s":
            if value is not None and not (_is_number(value) and value > 0):
                raise ValueError(f"duration_s must be a positive number of seconds or null, got {value!r}")
        elif value is not None:  # mic, camera_size
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise ValueError(f"{key} must be a device name or index, got {value!r}")
            value = str(value)
        out[key] = value
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["ADMIN_TOKEN_ENV", "ServerConfig", "ServerSettings", "StreamSpec", "check_stream_id",
           "load_server_config", "stream_spec_from_mapping"]
