"""Stream configuration: one frozen dataclass, filled from YAML presets and ``key=value`` overrides.

Precedence: dataclass defaults, then the YAML file (a path, or a preset name shipped in
:mod:`omnizip_stream.presets`), then ``key=value`` overrides. Unknown keys are an error (with the list
of valid ones); values are converted to the field's type and checked against sane ranges
(:data:`LIMITS`), before any model is loaded. YAML aliases are bounded (no "billion laughs").

The compression settings are one :class:`~omnizip.config.OmniZipConfig`, ``StreamConfig.compression``.
Every one of its fields is a config key, written flat (``rho_video: 0.7``, ``knn_k=7``) or nested
(``compression: {rho_min: 0.3}`` in YAML, ``compression.rho_min=0.3`` on the command line); the short
aliases ``horizon``, ``tolerance`` and ``scope`` stand for ``controller_horizon``,
``controller_tolerance`` and ``stream_audio_scope``. Its ``mode`` is always ``streaming`` and its
``seed`` is the config's ``seed``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omnizip.config import OmniZipConfig
from omnizip_stream.config_io import (
    convert_value,
    num_text,
    parse_overrides,
    read_config_file,
    resolve_config_path,
    short_text,
)


class StreamConfigError(ValueError):
    """The config cannot run as a stream on the loaded model (window length, saliency); a one-line message."""


def stream_compression(**changes: Any) -> OmniZipConfig:
    """A stream's default compression: :class:`OmniZipConfig` in streaming mode with block saliency (+ ``changes``)."""
    return OmniZipConfig(**{"mode": "streaming", "saliency": "block", **changes})


@dataclass(frozen=True)
class StreamConfig:
    """Everything a live stream session needs.

    Attributes:
        model: ``tiny``, ``tiny-qwen3``, a hub id or a checkpoint folder.
        device: ``auto`` (cuda when present, else cpu), ``cpu``, ``cuda``, ``cuda:N``.
        dtype: ``auto`` (bf16 on cuda, fp32 on cpu), ``float32``, ``bfloat16``, ``float16``.
        attn: attention backend (``sdpa``, ``eager``, ``flash_attention_2``).
        method: compression method from the registry (``omnizip``, ``identity``, ``random``, ...).
        compression: the compression settings (ratios, ``g``, ``anchor_ratio``, ``rho_min``/``rho_max``,
            ``knn_k``, the controller's horizon and tolerance, the audio scope, ``saliency``,
            ``score_dtype``); see the module docstring for the keys. ``mode`` is always ``streaming`` and
            ``seed`` follows :attr:`seed`; a stream can only use ``saliency: block`` (``global`` is the
            offline reference of ``omnizip infer``).
        window_s: window length in seconds; None (default): the loaded model's
            :attr:`~omnizip.adapters.base.ModelSpec.exact_window_s` (2 s for Qwen2.5-Omni, 8 s for
            Qwen3-Omni), filled in by :meth:`for_model` when the stream is attached to the model. An
            explicit length must hold whole chunks of the model (checked there too).
        video_max_pixels: per-frame pixel budget (None: the family's paper setting, 128*28*28).
        cache_max_tokens: hard cap on cached tokens (stream + the reserve for a query).
        cache_max_mb: hard cap on cache memory in MiB (KV + the kept embeddings kept for re-anchoring).
        sink_windows: first windows kept forever, with the system prompt (attention sink).
        max_question_tokens: longest question accepted (longer ones get a ``too_long`` error).
        max_new_tokens: default and maximum answer length.
        reanchor: ``reprefill`` (exact: re-prefill retained windows at new positions) or ``rerotate``
            (re-rotate cached keys in place; cheaper, keeps states computed in their old context).
        reanchor_at: fraction of the model's position range at which positions are re-anchored.
        window_queue: windows waiting for the model before oldest video is dropped.
        query_queue: questions waiting before new ones get a ``busy`` error.
        first_window_wait_s: how long a question asked before the first window waits for one before
            it is answered ``not_ready`` (0: at once).
        system_prompt: overrides the model's default system prompt.
        seed: seed of the tiny model and of the randomised baselines (``compression.seed``).
        torch_threads: CPU threads for the model (0 = auto: one core is left to decoding and I/O, as
            torch's spinning threads slow down badly when a core is taken by another process).
    """

    model: str = "tiny"
    device: str = "auto"
    dtype: str = "auto"
    attn: str = "sdpa"
    method: str = "omnizip"
    compression: OmniZipConfig = field(default_factory=stream_compression)
    window_s: float | None = None
    video_max_pixels: int | None = None
    cache_max_tokens: int = 16384
    cache_max_mb: float = 2048.0
    sink_windows: int = 1
    max_question_tokens: int = 256
    max_new_tokens: int = 64
    reanchor: str = "reprefill"
    reanchor_at: float = 0.5
    window_queue: int = 4
    query_queue: int = 16
    first_window_wait_s: float = 5.0
    system_prompt: str | None = None
    seed: int = 0
    torch_threads: int = 0

    def __post_init__(self) -> None:
        comp = self.compression
        if not isinstance(comp, OmniZipConfig):
            raise ValueError("compression must be an OmniZipConfig (in a config file: a mapping of its keys)")
        if comp.mode != "streaming" or comp.seed != self.seed:  # a stream compresses one window at a time
            object.__setattr__(self, "compression", dataclasses.replace(comp, mode="streaming", seed=self.seed))
        _validate(self)

    def check_model(self, spec: Any) -> None:
        """Check the window length against the loaded model's :class:`~omnizip.adapters.base.ModelSpec`.

        A window must hold whole interleave chunks and whole temporal grid steps of the model
        (``window_s=None`` stands for the model's ``exact_window_s``).

        Raises:
            StreamConfigError: one line naming the model's chunk length.
        """
        window_s = float(spec.exact_window_s) if self.window_s is None else self.window_s
        for step_s in (float(spec.seconds_per_chunk), float(spec.second_per_grid)):
            if step_s > 0 and abs(window_s / step_s - round(window_s / step_s)) > 1e-9:
                hint = f" (leave window_s unset for the model's {num_text(spec.exact_window_s)}-s window)" \
                    if hasattr(spec, "exact_window_s") else ""
                raise StreamConfigError(
                    f"window_s={window_s:g} is not a whole number of {spec.family}'s {step_s:g}-s chunks{hint}"
                )

    def check_stream(self) -> None:
        """Refuse settings a stream cannot run (before any model is loaded).

        Raises:
            StreamConfigError: ``saliency`` is not ``block``.
        """
        if self.compression.saliency != "block":
            raise StreamConfigError(f"saliency={self.compression.saliency} is the offline reference (omnizip infer); "
                                    "a stream can only use saliency=block")

    def for_model(self, spec: Any) -> StreamConfig:
        """The config on a loaded model, checked (:meth:`check_stream`, :meth:`check_model`), ``window_s`` filled.

        Args:
            spec: the model's :class:`~omnizip.adapters.base.ModelSpec`.

        Returns:
            ``self`` when ``window_s`` is set, else a copy with ``window_s = spec.exact_window_s``.

        Raises:
            StreamConfigError: the window is not whole chunks of the model, or the saliency is not ``block``.
        """
        self.check_stream()
        self.check_model(spec)
        if self.window_s is not None:
            return self
        return dataclasses.replace(self, window_s=float(spec.exact_window_s))

    @property
    def query_reserve_tokens(self) -> int:
        """Cache tokens kept free for a question, its chat wrapping and the answer."""
        return self.max_question_tokens + self.max_new_tokens + 16

    def replace(self, **changes: Any) -> StreamConfig:
        """A copy with some keys changed (validated); any config key, flat compression keys included.

        ``cfg.replace(rho_video=0.7, cache_max_tokens=4096)`` is ``config_from_mapping(changes, cfg)``.
        """
        return config_from_mapping(changes, self)


# The compression keys (OmniZipConfig's fields; its seed is the config's ``seed``) and their short aliases.
COMPRESSION_KEYS: tuple[str, ...] = tuple(f.name for f in fields(OmniZipConfig) if f.name != "seed")
ALIASES: dict[str, str] = {"horizon": "controller_horizon", "tolerance": "controller_tolerance",
                           "scope": "stream_audio_scope"}
STREAM_KEYS: tuple[str, ...] = tuple(f.name for f in fields(StreamConfig) if f.name != "compression")

# Sane ranges, checked before anything is loaded: (low, high), both inclusive.
LIMITS: dict[str, tuple[float, float]] = {
    "rho_audio": (0.0, 1.0),
    "rho_video": (0.0, 1.0),
    "g": (0, 64),
    "anchor_ratio": (0.0, 1.0),
    "rho_min": (0.0, 1.0),
    "rho_max": (0.0, 1.0),
    "knn_k": (1, 1024),
    "controller_horizon": (1, 100_000),
    "window_s": (1.0, 60.0),
    "video_max_pixels": (28 * 28, 16384 * 28 * 28),
    "cache_max_tokens": (1, 1 << 20),
    "cache_max_mb": (0.01, float(1 << 20)),
    "sink_windows": (0, 1000),
    "max_question_tokens": (1, 8192),
    "max_new_tokens": (1, 8192),
    "reanchor_at": (0.05, 0.95),
    "window_queue": (1, 1024),
    "query_queue": (1, 4096),
    "seed": (0, 2**32 - 1),
    "torch_threads": (0, 1024),
    "first_window_wait_s": (0.0, 3600.0),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "dtype": ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"),
    "attn": ("sdpa", "eager", "flash_attention_2"),
    "saliency": ("block", "global"),
    "score_dtype": ("float32", "bfloat16"),
    "stream_audio_scope": ("trailing", "window"),
    "reanchor": ("reprefill", "rerotate"),
}
MAX_SYSTEM_PROMPT_CHARS = 8192
MAX_MODEL_CHARS = 1024
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,2})?)$")


def canonical_key(key: str) -> str | None:
    """The config key ``key`` stands for (``horizon`` -> ``controller_horizon``, ``compression.g`` -> ``g``), or None."""
    name = key[len("compression."):] if key.startswith("compression.") else key
    name = ALIASES.get(name, name)
    if name in COMPRESSION_KEYS or name == "seed":
        return name
    if key == name and (name in STREAM_KEYS or name == "compression"):
        return name
    return None


def method_names() -> list[str]:
    """The registered compression methods (``identity``, ``omnizip``, ``random`` ...)."""
    from omnizip.registry import available

    return available()


def _value(cfg: StreamConfig, name: str) -> Any:
    """The value of key ``name`` (a compression key is read from ``cfg.compression``)."""
    return getattr(cfg.compression, name) if name in COMPRESSION_KEYS else getattr(cfg, name)


def _check_value(name: str, value: Any) -> None:
    """One key's range (:data:`LIMITS`) or choices (:data:`CHOICES`); one-line ValueError naming it."""
    if name in LIMITS and value is not None:
        low, high = LIMITS[name]
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
        if not low <= value <= high:
            raise ValueError(f"{name} must be in [{num_text(low)}, {num_text(high)}], got {num_text(value)}")
    if name in CHOICES and value not in CHOICES[name]:
        raise ValueError(f"{name} must be one of {', '.join(CHOICES[name])}; got {short_text(value)}")


def _validate(cfg: StreamConfig) -> None:
    """Every field against its type, range or choices; one-line ValueError naming the field."""
    for name in (*LIMITS, *CHOICES):
        _check_value(name, _value(cfg, name))
    if not _DEVICE.match(cfg.device):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps; got {short_text(cfg.device)}")
    if not cfg.model.strip() or len(cfg.model) > MAX_MODEL_CHARS:
        raise ValueError("model must be tiny, tiny-qwen3, small, a hub id or a checkpoint folder")
    if cfg.system_prompt is not None and len(cfg.system_prompt) > MAX_SYSTEM_PROMPT_CHARS:
        raise ValueError(f"system_prompt is {len(cfg.system_prompt)} characters; at most "
                         f"{MAX_SYSTEM_PROMPT_CHARS} are accepted")
    names = method_names()
    if cfg.method not in names:
        raise ValueError(f"unknown method {short_text(cfg.method)}; valid methods: {', '.join(names)}")


def _field_types() -> dict[str, Any]:
    """Key -> type of every flat key: StreamConfig's fields (but ``compression``) and the compression keys."""
    stream = typing.get_type_hints(StreamConfig)
    comp = typing.get_type_hints(OmniZipConfig)
    return {**{name: stream[name] for name in STREAM_KEYS}, **{name: comp[name] for name in COMPRESSION_KEYS}}


def _valid_keys_text() -> str:
    return (f"valid keys: {', '.join(sorted((*STREAM_KEYS, *COMPRESSION_KEYS)))}, compression (a mapping of the "
            f"compression keys); aliases: {', '.join(f'{a}={c}' for a, c in sorted(ALIASES.items()))}")


def _route(values: dict[str, Any]) -> tuple[OmniZipConfig | None, dict[str, tuple[str, Any]]]:
    """Split ``values`` into an OmniZipConfig given whole (or None) and ``key -> (as written, value)``.

    Flat keys, aliases, ``compression.KEY`` and a nested ``compression:`` mapping all land on the
    canonical key; the same key given twice with different values is an error.
    """
    whole: OmniZipConfig | None = None
    routed: dict[str, tuple[str, Any]] = {}
    unknown: list[str] = []
    unknown_nested: list[str] = []
    items: list[tuple[str, Any, bool]] = []
    for key, value in values.items():
        key = str(key)
        if key != "compression":
            items.append((key, value, False))
        elif isinstance(value, OmniZipConfig):
            whole = value
        elif isinstance(value, dict):
            items.extend((f"compression.{k}", v, True) for k, v in value.items())
        else:
            raise ValueError("compression must be a mapping of compression keys (compression: {rho_video: 0.7}); "
                             "on the command line write rho_video=0.7 or compression.rho_video=0.7")
    types_by_name = _field_types()
    for written, value, nested in items:
        name = canonical_key(written)
        if name is None or name == "compression":
            (unknown_nested if nested or written.startswith("compression.") else unknown).append(written)
            continue
        converted = convert_value(name, value, types_by_name[name])
        if name in routed and routed[name][1] != converted:
            raise ValueError(f"{name} is set twice with different values ({routed[name][0]} and {written})")
        routed[name] = (written, converted)
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(short_text(k, 40) for k in sorted(unknown)[:5])}; "
                         f"{_valid_keys_text()}")
    if unknown_nested:
        raise ValueError(f"unknown compression key(s) {', '.join(short_text(k, 52) for k in sorted(unknown_nested)[:5])}; "
                         f"valid compression keys: {', '.join(sorted(COMPRESSION_KEYS))}, seed; aliases: "
                         f"{', '.join(f'{a}={c}' for a, c in sorted(ALIASES.items()))}")
    return whole, routed


def config_from_mapping(values: dict[str, Any], base: StreamConfig | None = None) -> StreamConfig:
    """Apply ``values`` on top of ``base`` (default: the defaults).

    ``values`` holds flat keys (``rho_video``, ``knn_k``, ``horizon``, ``window_s`` ...), dotted
    compression keys (``compression.rho_min``) and/or a nested ``compression`` mapping (or a whole
    :class:`OmniZipConfig`, whose fields are then the base of the compression keys given).

    Raises:
        ValueError: unknown keys (with the valid ones), a key set twice, bad values or ranges; one line.
    """
    base = base or StreamConfig()
    whole, routed = _route(values)
    changes = {name: value for name, (_, value) in routed.items()}
    for name, value in changes.items():
        _check_value(name, value)
    if changes.get("mode", "streaming") != "streaming":
        raise ValueError(f"mode must be streaming, got {short_text(changes['mode'])}: a stream compresses one window "
                         "at a time (offline compression is omnizip infer)")
    comp = {k: v for k, v in changes.items() if k in COMPRESSION_KEYS}
    top = {k: v for k, v in changes.items() if k not in COMPRESSION_KEYS}
    compression = whole if whole is not None else base.compression
    if comp:
        compression = dataclasses.replace(compression, **comp)  # OmniZipConfig's own checks (rho_min <= rho_max)
    return dataclasses.replace(base, compression=compression, **top)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: StreamConfig | None = None) -> StreamConfig:
    """``base`` (default: the defaults), then the YAML file or preset at ``path``, then ``key=value`` overrides.

    Raises:
        ValueError: missing/invalid YAML, unknown keys, bad values or ranges (one-line messages).
    """
    cfg = base or StreamConfig()
    if path is not None:
        values = read_config_file(path)
        if "streams" in values:
            raise ValueError(f"{path} is a server file (it lists streams): run it with omnizip serve --config {path}")
        cfg = config_from_mapping(values, cfg)
    if overrides:
        cfg = config_from_mapping(parse_overrides(overrides), cfg)
    return cfg


__all__ = ["ALIASES", "COMPRESSION_KEYS", "STREAM_KEYS", "StreamConfig", "StreamConfigError", "canonical_key",
           "config_from_mapping", "load_config", "method_names", "parse_overrides", "read_config_file",
           "resolve_config_path", "stream_compression"]
