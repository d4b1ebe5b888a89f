"""OmniZip-Stream: the live pipeline (sources, windows, engine, rolling KV cache, query transports).

Public API::

    from omnizip_stream import StreamConfig, StreamSession, Window

    async with StreamSession.from_config(StreamConfig(model="tiny")) as session:
        await session.push_window(Window(t0_s, audio, frames, frame_pts_s))
        answer = await session.ask("What just happened?")

Importing this package loads neither torch models nor PyAV; those load when a session or source opens.
"""

from omnizip_stream.config import StreamConfig, load_config
from omnizip_stream.query.base import Answer, QueryError
from omnizip_stream.window import Window

__all__ = [
    "Answer",
    "Clip",
    "MediaError",
    "QueryError",
    "SourceError",
    "StreamConfig",
    "StreamSession",
    "Window",
    "decode_clip",
    "list_devices",
    "load_config",
    "open_windows",
]

_LAZY = {
    "StreamSession": "omnizip_stream.session",
    "Clip": "omnizip_stream.media",
    "decode_clip": "omnizip_stream.media",
    "MediaError": "omnizip_stream.sources.base",
    "SourceError": "omnizip_stream.sources.base",
    "list_devices": "omnizip_stream.sources.devices",
    "open_windows": "omnizip_stream.sources.open",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
