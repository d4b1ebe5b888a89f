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
    """Make the session's next ingest wait on ``gate``; ``entered`` is set when the model thread is in it.

    Gates the window's first phase, which a batch of one and a batch of several streams both run.
    """
    gate, entered = threading.Event(), threading.Event()
    original = session.engine.begin_window

    def gated(window: Window, *prepared: Any) -> Any:
        entered.set()
        gate.wait(10)
        return original(window, *prepared)

    session.engine.begin_window = gated
    return gate, entered


async def until(predicate: Any, rounds: int = 1000) -> None:
    """Yield to the event loop until ``predicate()`` holds (bounded)."""
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


class Hold:
    """Keeps the model thread inside a window of a stream of its own while work queues up behind it.

    ``async with hold:`` pushes the holder's next window and returns once the model thread is stuck in
    it; on exit the window goes on, and what was queued meanwhile is picked as whole batches.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self._windows = iter(windows_for(60.0, seed=99, size=(56, 56)))
        self._gate: threading.Event | None = None

    async def __aenter__(self) -> Hold:
        self._gate, entered = gate_ingest(self.session)
        await self.session.push_window(next(self._windows))
        assert await asyncio.to_thread(entered.wait, 10)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._gate is not None
        self._gate.set()


def trace_batches(worker: ModelWorker) -> list[tuple[str, list[str]]]:
    """Record ``(kind, stream_ids)`` of every batch the model thread runs, in order."""
    trace: list[tuple[str, list[str]]] = []
    worker.on_batch = lambda kind, ids: trace.append((kind, list(ids)))
    return trace
