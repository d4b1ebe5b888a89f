"""Helpers of the standing-question tests: a tiny-model engine / stream with a few windows."""

from __future__ import annotations

from typing import Any

from omni_helpers import clip_windows, make_adapter, synthetic_clip

from omnizip_stream.config import StreamConfig
from omnizip_stream.engine import StreamEngine
from omnizip_stream.window import Window

PIXELS = 56 * 56
QUESTIONS = ["Is a dog barking?", "Is someone in the kitchen?", "Is the kettle whistling?", "Is it dark?"]


def stream_config(**overrides: Any) -> StreamConfig:
    """Tiny-model stream config: byte-level tokens, so room for a standing question's instruction."""
    return StreamConfig(model="tiny", **{"method": "omnizip", "max_new_tokens": 6, "max_question_tokens": 96,
                                         "video_max_pixels": PIXELS, "window_queue": 16, **overrides})


def adapter_for(tiny25: Any) -> Any:
    return make_adapter(tiny25, video_max_pixels=PIXELS)


def windows_for(seconds: float, seed: int = 1) -> list[Window]:
    wav, frames = synthetic_clip(seconds, seed=seed)
    return clip_windows(wav, frames)


def engine_with_windows(tiny25: Any, seconds: float = 6.0, **overrides: Any) -> StreamEngine:
    engine = StreamEngine(adapter_for(tiny25), stream_config(**overrides))
    for window in windows_for(seconds):
        engine.ingest(window)
    return engine
