"""Helpers of the stream-server tests: tiny-model stream configs, synthetic windows, a job trace."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from omni_helpers import clip_windows, make_adapter, synthetic_clip

from omnizip_stream.config import StreamConfig, config_from_mapping
from omnizip_stream.server import ModelWorker
from omnizip_stream.window import Window

PIXELS = 56 * 56


def stream_config(**overrides: Any) -> StreamConfig:
    """A tiny-model stream config (small answers, small frames); ``overrides`` per stream."""
    return config_from_mapping({"model": "tiny", "method": "omnizip", "max_new_tokens": 6, "max_question_tokens": 32,
                                "video_max_pixels": PIXELS, "window_queue": 16, **overrides})


def adapter_for(tiny25: Any) -> Any:
    """The shared adapter (one model object for every stream of a test)."""
    return make_adapter(tiny25, video_max_pixels=PIXELS)


def windows_for(seconds: float, seed: int, size: tuple[int, int] = (112, 112)) -> list[Window]:
    """2-s windows of a synthetic clip (different seed/size: a different stream)."""
    wav, frames = synthetic_clip(seconds, seed=seed, size=size)
    return clip_windows(wav, frames)


def worker_for(tiny25: Any) -> ModelWorker:
    """An unstarted worker serving the tiny model."""
    return ModelWorker(stream_config(), adapter=adapter_for(tiny25))


def trace_jobs(worker: ModelWorker) -> list[tuple[str, str]]:
    """Record ``(stream_id, kind)`` of every job the model thread runs, in order."""
    trace: list[tuple[str, str]] = []
    worker.on_job = lambda sid, kind: trace.append((sid, kind))
    return trace


def gate_ingest(session: Any) -> tuple[threading.Event, threading.Event]:
    """Make the session's next ingest wait on ``gate``; ``entered`` is set when the model thread is in it."""
    gate, entered = threading.Event(), threading.Event()
    original = session.engine.ingest

    def gated(window: Window) -> Any:
        entered.set()
        gate.wait(10)
        return original(window)

    session.engine.ingest = gated
    return gate, entered


async def until(predicate: Any, rounds: int = 1000) -> None:
    """Yield to the event loop until ``predicate()`` holds (bounded)."""
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")
