"""StreamSession: the asyncio API around the model thread (tiny model, no sleeps in assertions)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from omni_helpers import clip_windows, make_adapter, synthetic_clip

from omnizip_stream import Answer, QueryError
from omnizip_stream.config import StreamConfig
from omnizip_stream.session import StreamSession
from omnizip_stream.window import Window

PIXELS = 56 * 56


def _session(tiny25, **overrides) -> StreamSession:
    cfg = StreamConfig(model="tiny", **{"method": "omnizip", "max_new_tokens": 6, "max_question_tokens": 32,
                                        "video_max_pixels": PIXELS, **overrides})
    return StreamSession.from_config(cfg, adapter=make_adapter(tiny25, video_max_pixels=PIXELS))


async def test_push_ask_stream_and_stats(tiny25):
    wav, frames = synthetic_clip(8.0, seed=1)
    async with _session(tiny25) as session:
        for w in clip_windows(wav, frames):
            await session.push_window(w)
        await session.drain()
        answer = await session.ask("What is going on?", max_new_tokens=5)
        assert isinstance(answer, Answer) and answer.window_range == (0, 3) and answer.time_range_s == (0.0, 8.0)
        assert 0 < answer.ttft_ms <= answer.total_ms and answer.tokens_generated <= 5
        stream = session.ask_stream("And now?", max_new_tokens=5)
        pieces = [piece async for piece in stream]
        assert all(isinstance(p, str) for p in pieces) and isinstance(stream.answer, Answer)
        assert "".join(pieces).strip() == stream.answer.text and stream.answer.window_range == (0, 3)
        stats = session.stats()
        for key in ("windows_ingested", "windows_evicted", "kv_tokens", "kv_bytes", "max_position", "video_dropped",
                    "retention_audio", "retention_video"):
            assert key in stats
        assert stats["windows_ingested"] == 4 and stats["video_dropped"] == 0
        assert 0 < stats["retention_video"] < 1 and 0 < stats["retention_audio"] < 1


async def test_questions_jump_ahead_of_pending_windows(tiny25):
    wav, frames = synthetic_clip(24.0, seed=2)
    windows = clip_windows(wav, frames)
    async with _session(tiny25, window_queue=16) as session:
        gate, entered = threading.Event(), threading.Event()
        original = session.engine.ingest

        def slow_ingest(window):
            entered.set()
            gate.wait(5)
            return original(window)

        session.engine.ingest = slow_ingest
        await session.push_window(windows[0])
        assert await asyncio.to_thread(entered.wait, 5)  # the model thread is busy with window 0
        for w in windows[1:]:
            await session.push_window(w)
        ask = asyncio.ensure_future(session.ask("Now?", max_new_tokens=2))
        await asyncio.sleep(0.05)
        gate.set()
        answer = await ask
        # Served right after the window in progress, before the 10 queued ones.
        assert answer.window_range == (0, 0)
        await session.drain()
        assert session.stats()["windows_ingested"] == 12


async def test_concurrent_questions_are_answered_in_order(tiny25):
    wav, frames = synthetic_clip(4.0, seed=3)
    async with _session(tiny25) as session:
        for w in clip_windows(wav, frames):
            await session.push_window(w)
        await session.drain()
        done: list[int] = []

        async def ask(i):
            await session.ask(f"question {i}?", max_new_tokens=2)
            done.append(i)

        await asyncio.gather(*(ask(i) for i in range(6)))
        assert done == list(range(6))


async def test_busy_when_the_question_queue_is_full(tiny25):
    wav, frames = synthetic_clip(2.0, seed=3)
    async with _session(tiny25, query_queue=2) as session:
        await session.push_window(clip_windows(wav, frames)[0])
        await session.drain()
        gate, entered = threading.Event(), threading.Event()
        original = session.engine.answer

        def slow_answer(*args, **kwargs):
            entered.set()
            gate.wait(5)
            return original(*args, **kwargs)

        session.engine.answer = slow_answer
        first = [asyncio.ensure_future(session.ask("q0?", 2))]
        assert await asyncio.to_thread(entered.wait, 5)  # q0 is being answered
        first += [asyncio.ensure_future(session.ask(f"q{i}?", 2)) for i in (1, 2)]  # 2 queued
        await asyncio.sleep(0)
        with pytest.raises(QueryError) as err:
            await session.ask("one too many?", 2)
        assert err.value.code == "busy"
        gate.set()
        assert all(isinstance(a, Answer) for a in await asyncio.gather(*first))
        assert session.stats()["queries_busy"] == 1


async def test_bad_questions_get_codes_and_the_session_keeps_going(tiny25):
    wav, frames = synthetic_clip(2.0)
    async with _session(tiny25) as session:
        await session.push_window(clip_windows(wav, frames)[0])
        for question, code in (("", "bad_request"), ("  ", "bad_request"), ("why " * 300, "too_long")):
            with pytest.raises(QueryError) as err:
                await session.ask(question)
            assert err.value.code == code
        assert isinstance(await session.ask("fine?", 2), Answer)


async def test_video_is_dropped_oldest_first_when_behind_real_time(tiny25):
    wav, frames = synthetic_clip(20.0, seed=4)
    windows = clip_windows(wav, frames)
    async with _session(tiny25, window_queue=3) as session:
        gate = threading.Event()
        original = session.engine.ingest
        seen: list[Window] = []

        def slow_ingest(window):
            gate.wait(5)
            seen.append(window)
            return original(window)

        session.engine.ingest = slow_ingest
        # Pretend the stream started 30 s ago: every window is already behind real time.
        session._clock_origin = time.perf_counter() - 30.0
        pushes = asyncio.ensure_future(_push_all(session, windows))
        await asyncio.sleep(0.2)
        gate.set()
        await pushes
        await session.drain()
        stats = session.stats()
        assert stats["windows_ingested"] == len(windows)  # no window (so no audio) was lost
        assert stats["video_dropped"] > 0 and stats["video_dropped"] % 4 == 0
        assert all(w.audio.size == 32000 for w in seen)
        stripped = [w.t0_s for w in seen if w.num_frames == 0]
        assert stripped and stripped == sorted(stripped)
        assert sum(w.video_dropped for w in seen) == stats["video_dropped"]


async def test_replay_faster_than_real_time_backpressures_instead_of_dropping(tiny25):
    wav, frames = synthetic_clip(16.0, seed=5)
    async with _session(tiny25, window_queue=2) as session:
        for w in clip_windows(wav, frames):
            await session.push_window(w)  # windows are in the future of the wall clock: wait, don't drop
        await session.drain()
        assert session.stats()["video_dropped"] == 0 and session.stats()["windows_ingested"] == 8


async def test_a_failing_window_does_not_stop_the_stream(tiny25):
    wav, frames = synthetic_clip(4.0, seed=6)
    good = clip_windows(wav, frames)
    async with _session(tiny25) as session:
        original = session.engine.ingest

        def flaky(window):
            if window.t0_s == 0.0:
                raise RuntimeError("decoder hiccup")
            return original(window)

        session.engine.ingest = flaky
        for w in good:
            await session.push_window(w)
        await session.drain()
        assert session.stats()["windows_failed"] == 1 and session.stats()["windows_ingested"] == 1
        assert isinstance(await session.ask("ok?", 2), Answer)


async def test_closed_session_refuses_work(tiny25):
    session = _session(tiny25)
    async with session:
        pass
    with pytest.raises(QueryError) as err:
        await session.ask("hello?")
    assert err.value.code == "not_ready"
    with pytest.raises(QueryError):
        await session.push_window(Window(0.0, np.zeros(32000, np.float32), np.zeros((0, 0, 0, 3), np.uint8), np.zeros(0)))


async def test_model_load_error_surfaces_on_enter():
    from omnizip.adapters.base import ModelLoadError

    with pytest.raises(ModelLoadError, match="cannot load model"):
        async with StreamSession.from_config(StreamConfig(model="/no/such/model")):
            pass


async def _push_all(session, windows):
    for w in windows:
        await session.push_window(w)
