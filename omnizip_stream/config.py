"""Stream configuration: one frozen dataclass, filled from YAML presets and ``key=value`` overrides.

Precedence: dataclass defaults, then the YAML file (a path, or a preset name shipped in
:mod:`omnizip_stream.presets`), then ``key=value`` overrides. Unknown keys are an error (with the list
of valid ones); values are converted to the field's type and checked against sane ranges
(:data:`LIMITS`), before any model is loaded. YAML aliases are bounded (no "billion laughs").
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from omnizip.config import OmniZipConfig


@dataclass(frozen=True)
class StreamConfig:
    """Everything a live stream session needs.

    Attributes:
        model: ``tiny``, ``tiny-qwen3``, a hub id or a checkpoint folder.
        device: ``auto`` (cuda when present, else cpu), ``cpu``, ``cuda``, ``cuda:N``.
        dtype: ``auto`` (bf16 on cuda, fp32 on cpu), ``float32``, ``bfloat16``, ``float16``.
        attn: attention backend (``sdpa``, ``eager``, ``flash_attention_2``).
        method: compression method from the registry (``omnizip``, ``identity``, ``random``, ...).
        rho_audio: audio pruning ratio of OmniZip's salient stage.
        rho_video: target video pruning ratio.
        g: tokens merged per audio anchor.
        anchor_ratio: anchors as a fraction of audio tokens.
        saliency: audio saliency variant; a stream can only use ``block``.
        score_dtype: dtype of OmniZip's similarity scores (``float32``; ``bfloat16`` mimics the reference).
        window_s: window length in seconds; a multiple of the model's interleave chunk (2 s).
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
        seed: seed of the tiny model and randomised baselines.
        torch_threads: CPU threads for the model (0 = auto: one core is left to decoding and I/O, as
            torch's spinning threads slow down badly when a core is taken by another process).
    """

    model: str = "tiny"
    device: str = "auto"
    dtype: str = "auto"
    attn: str = "sdpa"
    method: str = "omnizip"
    rho_audio: float = 0.3
    rho_video: float = 0.6
    g: int = 3
    anchor_ratio: float = 0.05
    saliency: str = "block"
    score_dtype: str = "float32"
    window_s: float = 2.0
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
        _validate(self)

    def check_model(self, spec: Any) -> None:
        """Check the window length against the loaded model's :class:`~omnizip.adapters.base.ModelSpec`.

        A window must hold whole interleave chunks and whole temporal grid steps of the model.

        Raises:
            ValueError: one line naming the model's chunk length.
        """
        for step_s in (float(spec.seconds_per_chunk), float(spec.second_per_grid)):
            if step_s > 0 and abs(self.window_s / step_s - round(self.window_s / step_s)) > 1e-9:
                raise ValueError(
                    f"window_s={self.window_s:g} is not a whole number of {spec.family}'s {step_s:g}-s chunks"
                )

    @property
    def query_reserve_tokens(self) -> int:
        """Cache tokens kept free for a question, its chat wrapping and the answer."""
        return self.max_question_tokens + self.max_new_tokens + 16

    def omnizip_config(self) -> OmniZipConfig:
        """The compression settings, in streaming mode."""
        return OmniZipConfig(
            rho_audio=self.rho_audio,
            rho_video=self.rho_video,
            g=self.g,
            anchor_ratio=self.anchor_ratio,
            mode="streaming",
            saliency="block" if self.saliency == "block" else "global",
            seed=self.seed,
            score_dtype="bfloat16" if self.score_dtype == "bfloat16" else "float32",
        )

    def replace(self, **changes: Any) -> StreamConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


# Sane ranges, checked before anything is loaded: (low, high), both inclusive.
LIMITS: dict[str, tuple[float, float]] = {
    "rho_audio": (0.0, 1.0),
    "rho_video": (0.0, 1.0),
    "g": (0, 64),
    "anchor_ratio": (0.0, 1.0),
    "window_s": (2.0, 60.0),
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
    "reanchor": ("reprefill", "rerotate"),
}
MAX_SYSTEM_PROMPT_CHARS = 8192
MAX_MODEL_CHARS = 1024
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,2})?)$")


def method_names() -> list[str]:
    """The registered compression methods (``identity``, ``omnizip``, ``random`` ...)."""
    from omnizip.registry import available

    return available()


def _validate(cfg: StreamConfig) -> None:
    """Every field against its type, range or choices; one-line ValueError naming the field."""
    for name, (low, high) in LIMITS.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
        if not low <= value <= high:
            raise ValueError(f"{name} must be in [{_num(low)}, {_num(high)}], got {_num(value)}")
    for name, choices in CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}; got {_short(getattr(cfg, name))}")
    if abs(cfg.window_s / 2.0 - round(cfg.window_s / 2.0)) > 1e-9:
        raise ValueError(f"window_s must be a positive multiple of the 2-s model chunk, got {cfg.window_s:g}")
    if not _DEVICE.match(cfg.device):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps; got {_short(cfg.device)}")
    if not cfg.model.strip() or len(cfg.model) > MAX_MODEL_CHARS:
        raise ValueError("model must be tiny, tiny-qwen3, small, a hub id or a checkpoint folder")
    if cfg.system_prompt is not None and len(cfg.system_prompt) > MAX_SYSTEM_PROMPT_CHARS:
        raise ValueError(f"system_prompt is {len(cfg.system_prompt)} characters; at most "
                         f"{MAX_SYSTEM_PROMPT_CHARS} are accepted")
    names = method_names()
    if cfg.method not in names:
        raise ValueError(f"unknown method {_short(cfg.method)}; valid methods: {', '.join(names)}")
    cfg.omnizip_config()  # the compression fields' own checks


def _num(x: float) -> str:
    """``16384``, ``0.05``, ``1e+12``: whole numbers without a trailing ``.0`` or an exponent when short."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e10 else f"{x:g}"


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of a user value, cut to ``limit`` characters (a message stays one short line)."""
    text = repr(value) if isinstance(value, str) and len(value) <= limit else repr(value)[:limit]
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + "..."


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(StreamConfig)
    return {f.name: hints[f.name] for f in fields(StreamConfig)}


def _convert(name: str, value: Any, target: Any) -> Any:
    """Convert a YAML/CLI value to the field's type (``None``/``null`` allowed for optional fields)."""
    args = typing.get_args(target)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), target) if args else target
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ValueError(f"{name} cannot be empty")
    if not isinstance(value, (str, int, float, bool)):
        raise ValueError(f"{name} must be a single {getattr(base, '__name__', base)}, got a {type(value).__name__}")
    try:
        if base is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if isinstance(value, str) and not value.strip().lstrip("+-").isdigit() else value
            if isinstance(number, float):
                if not math.isfinite(number):
                    raise ValueError(f"{name} must be a finite whole number, got {_short(value)}")
                if not number.is_integer():
                    raise ValueError
            return int(number)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"{name} must be a finite number, got {_short(value)}")
            return number
        if base is str:
            return str(value)
    except ValueError as exc:
        if str(exc).startswith(f"{name} "):
            raise
        raise ValueError(f"{name} must be {getattr(base, '__name__', base)}, got {_short(value)}") from None
    except TypeError:
        raise ValueError(f"{name} must be {getattr(base, '__name__', base)}, got {_short(value)}") from None
    return value


def config_from_mapping(values: dict[str, Any], base: StreamConfig | None = None) -> StreamConfig:
    """Apply ``values`` on top of ``base`` (default: the defaults); unknown keys raise ValueError."""
    types_by_name = _field_types()
    unknown = sorted(str(k) for k in set(values) - set(types_by_name))
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(_short(k, 40) for k in unknown[:5])}; "
                         f"valid keys: {', '.join(sorted(types_by_name))}")
    converted = {k: _convert(k, v, types_by_name[k]) for k, v in values.items()}
    return dataclasses.replace(base or StreamConfig(), **converted)


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}``; a malformed item raises ValueError."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {_short(item)} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


MAX_CONFIG_BYTES = 64 * 1024
MAX_YAML_ALIASES = 32


def _yaml_loader() -> type:
    """A ``yaml.SafeLoader`` that refuses more than ``MAX_YAML_ALIASES`` aliases (billion laughs)."""
    import yaml

    class _BoundedLoader(yaml.SafeLoader):
        aliases_seen = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases_seen += 1
                if self.aliases_seen > MAX_YAML_ALIASES:
                    raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases (*name); a config needs none")
            return super().compose_node(parent, index)

    return _BoundedLoader


def resolve_config_path(name: str | Path) -> Path:
    """A YAML file path, or the name of a shipped preset (``qwen2.5-omni-7b``); ValueError when neither."""
    from omnizip_stream.presets import available_presets, preset_path

    p = Path(name)
    if p.is_file():
        return p
    shipped = preset_path(p.name)
    if shipped is not None and (p.parent == Path(".") or not p.parent.exists() or p.parent.name == "configs"):
        return shipped
    raise ValueError(f"config file {str(name)!r} does not exist and is not a preset name; presets: "
                     f"{', '.join(available_presets())}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The ``key: value`` mapping of a YAML config file or preset name (bounded size and aliases)."""
    import yaml

    p = resolve_config_path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"config file {str(p)!r} cannot be read: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"config file {str(p)!r} is {len(raw)} bytes; a config is a few lines")
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_yaml_loader()) or {}  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError:
        raise ValueError(f"config file {str(p)!r} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {str(p)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r} must hold a mapping of key: value")
    return data


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


__all__ = ["StreamConfig", "config_from_mapping", "load_config", "method_names", "parse_overrides",
           "read_config_file", "resolve_config_path"]
