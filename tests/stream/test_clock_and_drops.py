"""One clock, one drop policy, one grid: a paced source, the windowing and a session stepped through time.

A ``ManualClock(autoadvance=False)`` only moves when the test says so: the synthetic source is paced on
it, the window stream's ticker sleeps on it, and the session reads deadlines, "behind real time" and
lags from it, so every number below is exact and nothing sleeps in real time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
from omni_helpers import make_adapter, synthetic_clip

from omnizip_stream.clock import ManualClock
from omnizip_stream.config import StreamConfig
from omnizip_stream.console import status_line
from omnizip_stream.server import ModelWorker
from omnizip_stream.session import StreamSession
from omnizip_stream.sources import open_windows
from omnizip_stream.window import Window

PIXELS = 56 * 56


def _config(**overrides: Any) -> StreamConfig:
    return StreamConfig(model="tiny", **{"method": "omnizip", "max_new_tokens": 6, "max_question_tokens": 32,
                                         "video_max_pixels": PIXELS, **overrides})


def _record_ingest(session: StreamSession, gate: threading.Event | None = None) -> tuple[list[Window],
                                                                                         threading.Event]:
    """Record the windows the engine gets; with ``gate``, the model thread waits on it in every ingest."""
    seen: list[Window] = []
    entered = threading.Event()
    assert session.engine is not None
    original = session.engine.ingest

    def ingest(window: Window, *prepared: Any) -> Any:
        entered.set()
        if gate is not None:
            assert gate.wait(30)
        seen.append(window)
        return original(window, *prepared)

    session.engine.ingest = ingest  # type: ignore[method-assign]
    return seen, entered


async def _until(predicate: Any, timeout_s: float = 20.0) -> None:
    """Yield (briefly) until ``predicate()`` holds: the other threads run in real time, the stream's clock does not."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_paced_source_windowing_and_session_on_one_manual_clock(tiny25):
    """Live synthetic source -> windows -> session, the model stuck on window 0 while 12 s go by: exact drops,
    deadlines and lags, one set of counters, and nothing dropped anywhere but in the session's policy."""
    clock = ManualClock(autoadvance=False)
    cfg = _config(window_queue=2)
    async with StreamSession.from_config(cfg, adapter=make_adapter(tiny25, video_max_pixels=PIXELS),
                                         clock=clock) as session:
        gate = threading.Event()
        seen, entered = _record_ingest(session, gate)
        async with open_windows("synthetic:seed=2,size=32x24", realtime=True, window_s=2.0, fps=2.0,
                                duration_s=12.0, clock=clock, max_latency_s=1e6) as windows:
            assert windows.live
            session.attach_source(windows.counters, live_clock=windows.session_time)
            pushed_at: list[float] = []

            async def pump() -> None:
                async for w in windows:
                    await session.push_window(w)
                    pushed_at.append(clock.now())

            pumping = asyncio.ensure_future(pump())
            try:
                for k in range(1, 7):  # window k-1 is complete at the live source at 2k s
                    clock.advance_to(2.0 * k)
                    await _until(lambda k=k: len(pushed_at) == k or pumping.done())
                    if k == 1:
                        await asyncio.to_thread(entered.wait, 10)  # the model holds window 0 from now on
                await pumping
            finally:
                pumping.cancel()
            assert pushed_at == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]  # each window pushed when it was complete
            with session.worker.cond:
                pending = list(session.windows)
            # Deadlines on the clock; windows 1-3 lost their video: only the newest window_queue=2 keep it.
            assert [p.deadline_s for p in pending] == [4.0, 6.0, 8.0, 10.0, 12.0]
            assert [p.window.num_frames for p in pending] == [0, 0, 0, 4, 4]
            stats = session.stats()
            assert stats["window_lag_s"] == 10.0  # at 12 s the model is still on window [0, 2)
            assert stats["windows_queued"] == 5
            assert stats["video_dropped"] == 12 and stats["windows_video_stripped"] == 3

            clock.advance_to(13.0)
            gate.set()
            await session.drain()
            session.end_of_source()
            stats = session.stats()
            counters = windows.counters.snapshot()
    assert [w.t0_s for w in seen] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert [w.num_frames for w in seen] == [4, 0, 0, 0, 4, 4] and all(w.audio.size == 32000 for w in seen)
    assert stats["windows_ingested"] == 6
    assert stats["ingest_lag_s"] == 1.0 and stats["window_lag_s"] == 1.0  # the last window landed at 13 s
    # One set of counters: the session's drops are the source's counters, and are shown once.
    assert stats["video_dropped"] == counters["video_dropped"] == stats["source"]["video_dropped"] == 12
    assert "dropped video 12" in status_line(stats)
    # Nothing upstream of the session dropped, repeated or lost anything.
    for key in ("audio_dropped_samples", "video_late", "audio_late_samples", "video_frames_repeated",
                "windows_dropped"):
        assert counters[key] == 0, key
    assert counters["video_frames_in"] == 24 and counters["windows_out"] == 6


async def test_hand_made_windows_reach_the_engine_on_the_grid(tiny25):
    """A window made by hand (1.5 s of audio, 5 jittered frames) is put on the model's grid once, before the
    engine, which takes it as it is: exactly window_s * fps frames at the grid times, window_s * 16 kHz samples."""
    wav, frames = synthetic_clip(2.0, seed=3)
    jittered = Window(0.0, wav[:24000], np.concatenate([frames, frames[:1]]),
                      np.array([0.0, 0.4, 1.1, 1.45, 1.9]), duration_s=2.0)
    async with StreamSession.from_config(_config(), adapter=make_adapter(tiny25, video_max_pixels=PIXELS)) as session:
        seen, _ = _record_ingest(session)
        await session.push_window(jittered)
        await session.drain()
        stats = session.stats()
    assert stats["windows_ingested"] == 1 and stats["windows_failed"] == 0
    (w,) = seen
    assert w.audio.shape == (32000,) and np.all(w.audio[24000:] == 0)
    np.testing.assert_array_equal(w.audio[:24000], wav[:24000])
    np.testing.assert_allclose(w.frame_pts_s, [0.0, 0.5, 1.0, 1.5])
    # slot 0.0 <- the frame at 0.0; 0.5 <- 0.4 (nearest: no frame in [0.5, 1.0)); 1.0 <- 1.1; 1.5 <- 1.9 (first in slot)
    expected = np.concatenate([frames, frames[:1]])[[0, 1, 2, 4]]
    np.testing.assert_array_equal(w.frames, expected)
    assert session.media.video_frames_repeated == 1


async def test_the_streams_of_a_worker_run_on_its_clock(tiny25):
    clock = ManualClock(100.0)
    worker = ModelWorker(_config(), adapter=make_adapter(tiny25, video_max_pixels=PIXELS), clock=clock)
    with pytest.raises(ValueError, match="worker's clock"):
        StreamSession(_config(), worker=worker, clock=ManualClock())
    wav, frames = synthetic_clip(4.0, seed=5)
    async with worker:
        stream = await worker.add_stream("door", _config())
        assert stream.clock is clock
        gate = threading.Event()
        _, entered = _record_ingest(stream, gate)
        for t0 in (0.0, 2.0):
            await stream.push_window(Window(t0, wav[int(t0 * 16000):int((t0 + 2) * 16000)],
                                            frames[int(2 * t0):int(2 * t0) + 4], t0 + np.arange(4) / 2.0,
                                            duration_s=2.0))
            await asyncio.to_thread(entered.wait, 10)
            clock.advance(2.0)
        with worker.cond:
            pending = [(p.pushed_at, p.deadline_s) for p in stream.windows]
        gate.set()
        await stream.drain()
        assert stream.stats()["ingest_lag_s"] == 2.0  # pushed at 102 s, landed at 104 s on the worker's clock
    # No live clock (a replay): stream time 0 is set by the first push (window [0, 2) complete at 100 s), so
    # window [2, 4) was due at 102 s on the worker's clock, when it was pushed.
    assert pending == [(102.0, 102.0)]
