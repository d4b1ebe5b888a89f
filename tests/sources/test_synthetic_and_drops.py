"""Synthetic source determinism and timing; nothing dropped upstream under a slow consumer; the frame buffer."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import pytest

from omnizip_stream.clock import ManualClock
from omnizip_stream.sources import SourceError, open_windows
from omnizip_stream.sources._buffer import FrameBuffer
from omnizip_stream.sources.base import AudioChunk, SourceEnded, StreamCounters, VideoFrame
from omnizip_stream.sources.open import parse_spec
from omnizip_stream.sources.synthetic import (
    SyntheticParams,
    SyntheticSource,
    synthetic_audio,
    synthetic_frame,
)

from .conftest import dominant_hz


async def collect(spec: str, **kw):
    async with open_windows(spec, **kw) as windows:
        return [w async for w in windows], windows.counters.snapshot()


# ----------------------------------------------------------------------------- synthetic: pure functions
def test_synthetic_frame_and_audio_are_pure_functions():
    p = SyntheticParams(seed=3, width=64, height=48)
    np.testing.assert_array_equal(synthetic_frame(p, 17), synthetic_frame(SyntheticParams(seed=3, width=64, height=48), 17))
    assert not np.array_equal(synthetic_frame(p, 17), synthetic_frame(p, 18))  # it moves
    assert not np.array_equal(synthetic_frame(p, 17), synthetic_frame(SyntheticParams(seed=4, width=64, height=48), 17))
    whole = synthetic_audio(p, 0, 48000)
    pieces = np.concatenate([synthetic_audio(p, s, n) for s, n in ((0, 1000), (1000, 7), (1007, 46993))])
    np.testing.assert_array_equal(whole, pieces)  # chunking does not change the samples
    assert whole.dtype == np.float32 and np.abs(whole).max() <= 1.0
    assert abs(dominant_hz(whole[2400:2400 + 8000]) - p.tone_hz) < 5  # between beeps: the tone


def test_synthetic_options_parse_and_validate():
    p = SyntheticParams.from_options({"seed": "3", "size": "64x48", "rate": "15", "audio": "0"})
    assert (p.seed, p.width, p.height, p.rate_hz, p.audio) == (3, 64, 48, 15.0, False)
    for bad in ({"colour": "red"}, {"seed": "x"}, {"size": "big"}, {"audio": "0", "video": "0"}, {"amplitude": "2"}):
        with pytest.raises(SourceError) as info:
            SyntheticParams.from_options(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(SourceError, match="synthetic"):
        parse_spec("synthetic:seed")


# ----------------------------------------------------------------------------- synthetic: windows
async def test_synthetic_windows_deterministic_and_aligned():
    kw = {"realtime": False, "duration_s": 6.0, "max_side": 64}
    a, counters = await collect("synthetic:seed=3", **kw)
    b, _ = await collect("synthetic:seed=3", **kw)
    c, _ = await collect("synthetic:seed=4", **kw)
    assert [w.t0_s for w in a] == [0.0, 2.0, 4.0]
    for wa, wb, wc in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(wa.audio, wb.audio)
        np.testing.assert_array_equal(wa.frames, wb.frames)
        np.testing.assert_array_equal(wa.frame_pts_s, wb.frame_pts_s)
        assert not np.array_equal(wa.frames, wc.frames)
        assert wa.audio.shape == (32000,) and wa.frames.shape == (4, 48, 64, 3)
        np.testing.assert_allclose(wa.frame_pts_s, wa.t0_s + np.array([0, 0.5, 1.0, 1.5]))
    p = SyntheticParams(seed=3, width=64, height=48)
    np.testing.assert_array_equal(np.concatenate([w.audio for w in a]), synthetic_audio(p, 0, 96000))
    np.testing.assert_array_equal(a[1].frames[1], synthetic_frame(p, 25))  # t = 2.5 s at 10 fps
    assert counters["windows_out"] == 3 and counters["audio_samples_out"] == 96000


async def test_synthetic_multi_chunk_windows_and_fps():
    wins, _ = await collect("synthetic:size=32x24", realtime=False, duration_s=8.0, window_s=4.0, fps=5.0)
    assert [w.t0_s for w in wins] == [0.0, 4.0]
    assert all(w.audio.shape == (64000,) and w.num_frames == 20 for w in wins)
    with pytest.raises(ValueError, match="multiple"):
        async with open_windows("synthetic", window_s=3.0, chunk_s=2.0):
            pass


async def test_synthetic_paced_runs_in_about_real_time():
    t = time.monotonic()
    wins, counters = await collect("synthetic:size=32x24", realtime=True, duration_s=2.0)
    assert time.monotonic() - t >= 1.5
    assert len(wins) == 1 and wins[0].audio.shape == (32000,) and wins[0].num_frames == 4
    assert counters["video_dropped"] == 0 and counters["audio_late_samples"] == 0


async def test_synthetic_source_timestamps_in_order():
    src = SyntheticSource(SyntheticParams(width=16, height=16), realtime=False)
    await src.start()
    items = [await src.recv() for _ in range(40)]
    await src.aclose()
    audio = [i for i in items if isinstance(i, AudioChunk)]
    video = [i for i in items if isinstance(i, VideoFrame)]
    assert [a.pts_s for a in audio] == pytest.approx([k * 0.1 for k in range(len(audio))])
    assert [v.pts_s for v in video] == pytest.approx([k * 0.1 for k in range(len(video))])
    assert all(a.samples.shape == (1600,) for a in audio)


# ----------------------------------------------------------------------------- no drops upstream
async def test_slow_consumer_of_live_windows_loses_nothing_upstream():
    """Live (paced) source, consumer far slower than production: the sources and the windowing only buffer
    (bounded) and wait; every window keeps its video and all audio arrives. Shedding video is the session's
    policy alone (tests/stream/test_clock_and_drops.py)."""
    async with open_windows("synthetic:seed=1,size=32x24", realtime=True, clock=ManualClock(), max_latency_s=1e6,
                            max_queue_windows=2, duration_s=20.0) as windows:
        assert windows.live
        got = []
        async for w in windows:
            got.append(w)
            await asyncio.sleep(0.05)  # the paced producer would run far ahead of us
        counters = windows.counters.snapshot()
    assert [w.t0_s for w in got] == [2.0 * k for k in range(10)]  # no window lost
    audio = np.concatenate([w.audio for w in got])
    np.testing.assert_array_equal(audio, synthetic_audio(SyntheticParams(seed=1), 0, 320000))  # no audio lost
    assert all(w.num_frames == 4 and w.video_dropped == 0 for w in got)
    assert counters["video_dropped"] == counters["audio_dropped_samples"] == counters["video_late"] == 0
    assert counters["video_frames_repeated"] == 0


async def test_block_policy_drops_nothing():
    async with open_windows("synthetic:size=32x24", realtime=False, max_queue_windows=1, duration_s=10.0) as windows:
        got = []
        async for w in windows:
            got.append(w)
            await asyncio.sleep(0.05)
        counters = windows.counters.snapshot()
    assert all(w.num_frames == 4 and w.video_dropped == 0 for w in got) and len(got) == 5
    assert counters["video_dropped"] == 0


# ----------------------------------------------------------------------------- frame buffer
def vf(t: float) -> VideoFrame:
    return VideoFrame(t, np.zeros((2, 2, 3), np.uint8))


def ac(t: float) -> AudioChunk:
    return AudioChunk(t, np.zeros(160, np.float32))


async def test_buffer_never_drops_for_a_producer_that_can_wait():
    """A live producer thread (camera, URL, paced synthetic) waits for room: bounded buffering, no policy."""
    counters = StreamCounters()
    buf = FrameBuffer(3, counters=counters, name="t")
    buf.bind(asyncio.get_running_loop())
    stop = threading.Event()
    items = [vf(0.0), ac(0.0), vf(0.1), vf(0.2), ac(0.1)]
    th = threading.Thread(target=lambda: [buf.put(item, stop) for item in items])
    th.start()
    got = [await buf.get() for _ in range(5)]
    th.join(2)
    assert [(type(i).__name__, i.pts_s) for i in got] == [(type(i).__name__, i.pts_s) for i in items]
    assert counters.video_dropped == 0 and counters.audio_dropped_samples == 0


async def test_a_callback_that_cannot_wait_loses_the_oldest_counted(caplog):
    """put_nowait (the PortAudio callback): when the loop has not read for a whole buffer, the oldest item is
    lost, counted by kind and logged once."""
    counters = StreamCounters()
    buf = FrameBuffer(3, counters=counters, name="t")
    buf.bind(asyncio.get_running_loop())
    with caplog.at_level(logging.WARNING):
        for item in (vf(0.0), ac(0.0), ac(0.1), ac(0.2), ac(0.3)):
            assert buf.put_nowait(item)
    assert counters.video_dropped == 1 and counters.audio_dropped_samples == 160
    assert caplog.text.count("not reading the device") == 1
    buf.finish()
    assert [(await buf.get()).pts_s for _ in range(3)] == [0.1, 0.2, 0.3]
    with pytest.raises(SourceEnded):
        await buf.get()


async def test_non_live_buffer_blocks_producer_and_wakes_consumer():
    counters = StreamCounters()
    buf = FrameBuffer(2, counters=counters)
    buf.bind(asyncio.get_running_loop())
    stop = threading.Event()

    def produce():
        for k in range(6):
            buf.put(ac(k * 0.1), stop)
        buf.finish(SourceError("boom"))

    th = threading.Thread(target=produce)
    th.start()
    await asyncio.sleep(0.1)
    assert len(buf) == 2  # producer is blocked, nothing dropped
    got = [(await buf.get()).pts_s for _ in range(6)]
    assert got == pytest.approx([k * 0.1 for k in range(6)])
    with pytest.raises(SourceError, match="boom"):
        await buf.get()
    th.join(2)
    assert counters.audio_dropped_samples == 0 and counters.video_dropped == 0
