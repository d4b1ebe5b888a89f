"""Configuration presets shipped inside the package (``--config NAME`` works outside the repository).

The files here are the same as the repository's ``configs/*.yaml`` (a test keeps them byte-identical):
``configs/`` is what a checkout shows and edits, this folder is what ``pip install`` ships.
"""

from __future__ import annotations

from pathlib import Path

PRESETS_DIR = Path(__file__).resolve().parent


def available_presets(server: bool = False) -> list[str]:
    """Names of the shipped stream presets (``qwen2.5-omni-7b``, ``tiny-cpu``, ...), sorted.

    ``server=True``: the server files instead (``server``: they list ``streams:``, for ``omnizip serve``).
    """
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml") if is_server_file(p) == server)


def is_server_file(path: Path) -> bool:
    """Whether a config file is a server file (a top-level ``streams:`` key) rather than a stream preset."""
    try:
        return any(line.startswith("streams:") for line in path.read_text("utf-8").splitlines())
    except (OSError, UnicodeDecodeError):
        return False


def preset_path(name: str) -> Path | None:
    """The shipped file of preset ``name`` (with or without ``.yaml``), or None when there is none."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    if "/" in stem or "\\" in stem or stem.startswith("."):
        return None
    path = PRESETS_DIR / f"{stem}.yaml"
    return path if path.is_file() else None


__all__ = ["PRESETS_DIR", "available_presets", "is_server_file", "preset_path"]
