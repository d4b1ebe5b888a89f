"""StreamSession: the asyncio API around the model thread (tiny model, no sleeps in assertions)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from omni_helpers import clip_windows, make_adapter, synthetic_clip

from omnizip_stream import Answer, QueryError
from omnizip_stream.clock import ManualClock
from omnizip_stream.config import StreamConfig, config_from_mapping
from omnizip_stream.session import StreamSession
from omnizip_stream.window import Window

PIXELS = 56 * 56


def _session(tiny25, clock=None, **overrides) -> StreamSession:
    cfg = config_from_mapping({"model": "tiny", "method": "omnizip", "max_new_tokens": 6, "max_question_tokens": 32,
                               "video_max_pixels": PIXELS, **overrides})
    return StreamSession.from_config(cfg, adapter=make_adapter(tiny25, video_max_pixels=PIXELS), clock=clock)


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

        def slow_ingest(window, *prepared):
            entered.set()
            gate.wait(5)
            return original(window, *prepared)

        await session.push_window(windows[0])  # a first window, so the question need not wait for one
        await session.drain()
        session.engine.ingest = slow_ingest
        await session.push_window(windows[1])
        assert await asyncio.to_thread(entered.wait, 5)  # the model thread is busy with window 1
        for w in windows[2:]:
            await session.push_window(w)
        ask = asyncio.ensure_future(session.ask("Now?", max_new_tokens=2))
        await asyncio.sleep(0.05)
        gate.set()
        answer = await ask
        # Served right after the window in progress, before the 10 queued ones.
        assert answer.window_range == (0, 1)
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
    clock = ManualClock()
    async with _session(tiny25, window_queue=3, clock=clock) as session:
        session.attach_source(live_clock=clock.now)  # live: stream time is the clock's
        gate, entered = threading.Event(), threading.Event()
        original = session.engine.ingest
        seen: list[Window] = []

        def slow_ingest(window, *prepared):
            entered.set()
            gate.wait(5)
            seen.append(window)
            return original(window, *prepared)

        session.engine.ingest = slow_ingest
        clock.advance(30.0)  # every window is already behind real time
        await session.push_window(windows[0])
        await asyncio.to_thread(entered.wait, 5)  # the model is busy with window 0
        await _push_all(session, windows[1:])  # never waits: the source is live and the model behind
        gate.set()
        await session.drain()
        stats = session.stats()
        assert stats["windows_ingested"] == len(windows)  # no window (so no audio) was lost
        # windows 1-9 were pending: all but the newest window_queue=3 lost their video, oldest first
        assert stats["video_dropped"] == 6 * 4 and stats["windows_video_stripped"] == 6
        assert stats["audio_dropped_samples"] == 0 and stats["windows_dropped"] == 0
        assert all(w.audio.size == 32000 for w in seen)
        assert [w.t0_s for w in seen if w.num_frames == 0] == [2.0 * k for k in range(1, 7)]
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

        def flaky(window, *prepared):
            if window.t0_s == 0.0:
                raise RuntimeError("decoder hiccup")
            return original(window, *prepared)

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


async def test_a_question_before_the_first_window_waits_for_it_then_is_not_ready(tiny25):
    wav, frames = synthetic_clip(2.0, seed=7)
    async with _session(tiny25, first_window_wait_s=0.2) as session:
        with pytest.raises(QueryError) as err:
            await session.ask("anything yet?", 2)  # nothing comes within 0.2 s
        assert err.value.code == "not_ready"
        session.config = session.config.replace(first_window_wait_s=30.0)
        early = asyncio.ensure_future(session.ask("and now?", 2))
        await asyncio.sleep(0.05)
        assert not early.done()  # waiting for a window, not answering from nothing
        await session.push_window(clip_windows(wav, frames)[0])
        answer = await early
        assert answer.window_range == (0, 0) and answer.windows_cached == 1


async def test_the_answer_reports_the_windows_left_after_eviction(tiny25):
    from omnizip_stream.query.schema import final_answer

    wav, frames = synthetic_clip(24.0, seed=8)
    async with _session(tiny25, cache_max_tokens=250, sink_windows=1) as session:
        for w in clip_windows(wav, frames):
            await session.push_window(w)
        await session.drain()
        answer = await session.ask("What did you see?", 2)
    evicted = session.stats()["windows_evicted"]
    assert evicted > 0 and answer.windows_evicted == evicted
    assert answer.sink_window_range == (0, 0) and answer.sink_time_range_s == (0.0, 2.0)
    assert answer.recent_window_range == (evicted + 1, 11) and answer.recent_time_range_s == (2.0 * (evicted + 1), 24.0)
    assert answer.windows_cached == 12 - evicted and answer.has_gap
    assert answer.window_range == (0, 11)  # kept for compatibility: first to last cached window
    reply = final_answer("cam1", "r1", answer, 1.0)
    assert reply["sink_window_range"] == [0, 0] and reply["recent_window_range"] == [evicted + 1, 11]
    assert reply["windows_cached"] == 12 - evicted and reply["windows_evicted"] == evicted
    assert reply["window_range"] == [0, 11]


async def test_behind_live_is_measured_on_the_live_clock_and_stops_with_the_source(tiny25):
    wav, frames = synthetic_clip(6.0, seed=9)
    windows = clip_windows(wav, frames)
    live_now = [2.5]
    async with _session(tiny25) as session:
        assert session.stats()["window_lag_s"] is None  # no live clock: a replay has no "behind live"
        session.attach_source(live_clock=lambda: live_now[0])
        await session.push_window(windows[0])  # t = 0-2 s, in the cache at live time 2.5 s
        await session.drain()
        live_now[0] = 3.9  # later, with nothing waiting: the number does not climb
        assert session.stats()["window_lag_s"] == pytest.approx(0.5)
        gate, entered = threading.Event(), threading.Event()
        original = session.engine.ingest

        def stuck_ingest(window, *prepared):
            entered.set()
            gate.wait(5)
            return original(window, *prepared)

        session.engine.ingest = stuck_ingest
        live_now[0] = 4.2
        await session.push_window(windows[1])  # t = 2-4 s; the model is stuck on it
        assert await asyncio.to_thread(entered.wait, 5)
        live_now[0] = 9.0
        assert session.stats()["window_lag_s"] == pytest.approx(5.0)  # grows while the model is stuck
        gate.set()
        await session.drain()
        session.end_of_source()
        live_now[0] = 60.0
        stats = session.stats()
        assert stats["source_ended"] and stats["window_lag_s"] == pytest.approx(5.0)  # frozen at the end
