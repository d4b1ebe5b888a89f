"""Live and recorded media sources, and the one entry point that turns a source spec into windows.

``open_windows(spec, ...)`` is what the CLI and the engine use; ``list_devices()`` lists cameras and
microphones. Heavy modules (PyAV, sounddevice) load only when a source that needs them is opened.
"""

from __future__ import annotations

import importlib
from typing import Any

from omnizip_stream.sources.base import (
    AudioChunk,
    MediaError,
    Source,
    SourceEnded,
    SourceError,
    StreamCounters,
    VideoFrame,
)

_LAZY = {
    "open_windows": "omnizip_stream.sources.open",
    "parse_spec": "omnizip_stream.sources.open",
    "SourceSpec": "omnizip_stream.sources.open",
    "SPEC_HELP": "omnizip_stream.sources.open",
    "WindowStream": "omnizip_stream.sources.stream",
    "list_devices": "omnizip_stream.sources.devices",
    "DeviceInfo": "omnizip_stream.sources.devices",
    "DeviceList": "omnizip_stream.sources.devices",
    "CameraSource": "omnizip_stream.sources.camera",
    "MicSource": "omnizip_stream.sources.mic",
    "FileSource": "omnizip_stream.sources.file",
    "UrlSource": "omnizip_stream.sources.url",
    "SyntheticSource": "omnizip_stream.sources.synthetic",
    "SyntheticParams": "omnizip_stream.sources.synthetic",
}

__all__ = [
    "AudioChunk",
    "MediaError",
    "Source",
    "SourceEnded",
    "SourceError",
    "StreamCounters",
    "VideoFrame",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
