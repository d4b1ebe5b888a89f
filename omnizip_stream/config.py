"""Stream configuration: one frozen dataclass, filled from ``configs/*.yaml`` and ``key=value`` overrides.

Precedence: dataclass defaults, then the YAML file, then ``key=value`` overrides. Unknown keys are
an error (with the list of valid ones), values are converted to the field's type and validated.
"""

from __future__ import annotations

import dataclasses
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
        if self.window_s <= 0 or abs(self.window_s / 2.0 - round(self.window_s / 2.0)) > 1e-9:
            raise ValueError(f"window_s must be a positive multiple of the 2-s model chunk, got {self.window_s}")
        for name in ("cache_max_tokens", "max_question_tokens", "max_new_tokens", "window_queue", "query_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cache_max_mb <= 0:
            raise ValueError(f"cache_max_mb must be positive, got {self.cache_max_mb}")
        if not 0 <= self.first_window_wait_s <= 3600:
            raise ValueError(f"first_window_wait_s must be in [0, 3600] seconds, got {self.first_window_wait_s}")
        if self.torch_threads < 0:
            raise ValueError(f"torch_threads must be >= 0 (0 = auto), got {self.torch_threads}")
        if self.sink_windows < 0:
            raise ValueError(f"sink_windows must be >= 0, got {self.sink_windows}")
        if self.reanchor not in ("reprefill", "rerotate"):
            raise ValueError(f"reanchor must be 'reprefill' or 'rerotate', got {self.reanchor!r}")
        if not 0.05 <= self.reanchor_at <= 0.95:
            raise ValueError(f"reanchor_at must be in [0.05, 0.95], got {self.reanchor_at}")
        if self.saliency not in ("block", "global"):
            raise ValueError(f"saliency must be 'block' or 'global', got {self.saliency!r}")
        if self.video_max_pixels is not None and self.video_max_pixels < 28 * 28:
            raise ValueError(f"video_max_pixels must be at least {28 * 28}, got {self.video_max_pixels}")
        self.omnizip_config()  # validates the compression fields

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
        )

    def replace(self, **changes: Any) -> StreamConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


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
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if base is float:
            return float(value)
        if base is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {getattr(base, '__name__', base)}, got {value!r}") from None
    return value


def config_from_mapping(values: dict[str, Any], base: StreamConfig | None = None) -> StreamConfig:
    """Apply ``values`` on top of ``base`` (default: the defaults); unknown keys raise ValueError."""
    types_by_name = _field_types()
    unknown = sorted(set(values) - set(types_by_name))
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(types_by_name))}")
    converted = {k: _convert(k, v, types_by_name[k]) for k, v in values.items()}
    return dataclasses.replace(base or StreamConfig(), **converted)


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}``; a malformed item raises ValueError."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> StreamConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``key=value`` overrides.

    Raises:
        ValueError: missing/invalid YAML, unknown keys, bad values (one-line messages).
    """
    cfg = StreamConfig()
    if path is not None:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ValueError(f"config file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"config file {str(p)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {str(p)!r} must hold a mapping of key: value")
        cfg = config_from_mapping(data, cfg)
    if overrides:
        cfg = config_from_mapping(parse_overrides(overrides), cfg)
    return cfg


__all__ = ["StreamConfig", "config_from_mapping", "load_config", "parse_overrides"]
