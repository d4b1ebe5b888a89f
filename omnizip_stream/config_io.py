"""Config text in: YAML files and preset names, ``key=value`` items, values converted to a field's type.

YAML files are bounded in size and aliases.
:func:`read_config_file` and :func:`parse_overrides` return raw mappings; turning them into a
:class:`~omnizip_stream.config.StreamConfig` (key routing, validation) is
:func:`omnizip_stream.config.config_from_mapping`'s job.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any, Literal

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


def num_text(x: float) -> str:
    """``16384``, ``0.05``, ``1e+12``: whole numbers without a trailing ``.0`` or an exponent when short."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e10 else f"{x:g}"


def short_text(value: Any, limit: int = 60) -> str:
    """``repr`` of a user value, cut to ``limit`` characters (a message stays one short line)."""
    text = repr(value) if isinstance(value, str) and len(value) <= limit else repr(value)[:limit]
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + "..."


def convert_value(name: str, value: Any, target: Any) -> Any:
    """Convert a YAML/CLI value to the field's type (``None``/``null`` allowed for optional fields)."""
    if typing.get_origin(target) is Literal:  # a choice of strings, checked against CHOICES by the caller
        target = str
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
                    raise ValueError(f"{name} must be a finite whole number, got {short_text(value)}")
                if not number.is_integer():
                    raise ValueError
            return int(number)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"{name} must be a finite number, got {short_text(value)}")
            return number
        if base is str:
            return str(value)
    except ValueError as exc:
        if str(exc).startswith(f"{name} "):
            raise
        raise ValueError(f"{name} must be {getattr(base, '__name__', base)}, got {short_text(value)}") from None
    except TypeError:
        raise ValueError(f"{name} must be {getattr(base, '__name__', base)}, got {short_text(value)}") from None
    return value


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}``; a malformed item raises ValueError."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {short_text(item)} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


__all__ = ["convert_value", "num_text", "parse_overrides", "short_text", "MAX_CONFIG_BYTES", "MAX_YAML_ALIASES", "read_config_file", "resolve_config_path"]
