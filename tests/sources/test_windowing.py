"""The windowing core: exact sample counts, frames on the model's grid, fps sampling, deadlines, tails; clocks."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnizip_stream.clock import ManualClock, MonotonicClock
from omnizip_stream.sources.base import AudioChunk, StreamCounters, VideoFrame
from omnizip_stream.window import Window
from omnizip_stream.windowing import (
    AudioTimeline,
    FrameSampler,
    Windower,
    check_on_grid,
    on_grid,
    stack_frames,
    validate_window_s,
)

SR = 16000


def img(v: int = 0, h: int = 4, w: int = 6) -> np.ndarray:
    return np.full((h, w, 3), v, np.uint8)


def feed(windower: Windower, items) -> list:
    out = []
    for it in items:
        out += windower.add(it)
    return out


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("window_s, n", [(2.0, 1), (4.0, 2), (6, 3), (20.0, 10)])
def test_window_s_multiple_of_chunk(window_s, n):
    assert validate_window_s(window_s, 2.0) == n
    assert validate_window_s(window_s) == 1  # no model chunk given: any whole-sample length is one window


@pytest.mark.parametrize("window_s", [0, -2, 1.0, 3.0, 2.5, 0.5])
def test_window_s_not_multiple_is_rejected(window_s):
    with pytest.raises(ValueError, match="multiple of the model's 2-s chunk"):
        Windower(window_s=window_s, chunk_s=2.0)


def test_bad_fps_and_duration_rejected():
    with pytest.raises(ValueError, match="fps"):
        Windower(fps=0)
    with pytest.raises(ValueError, match="duration_s"):
        Windower(duration_s=0)
    with pytest.raises(ValueError, match="audio or video"):
        Windower(has_audio=False, has_video=False)


# ----------------------------------------------------------------------------- frame sampler
def test_sampler_keeps_first_frame_at_or_after_each_grid_point():
    s = FrameSampler(2.0)
    times = [i / 30 for i in range(90)]
    kept = [t for t in times if s.accept(t)]
    assert kept == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])


def test_sampler_preroll_and_none():
    s = FrameSampler(2.0)
    assert not s.accept(-0.1)
    assert s.accept(0.01)
    everything = FrameSampler(None)
    assert all(everything.accept(t) for t in (0.0, 0.001, 0.002))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 20, allow_nan=False), min_size=1, max_size=200), st.sampled_from([1.0, 2.0, 5.0, 3.0]))
def test_sampler_is_idempotent_and_spaced(times, fps):
    times = sorted(times)
    first = FrameSampler(fps)
    kept = [t for t in times if first.accept(t)]
    second = FrameSampler(fps)
    assert [t for t in kept if second.accept(t)] == kept
    # at most one kept frame per grid cell [k/fps, (k+1)/fps)
    cells = [int(np.floor(t * fps + 1e-6)) for t in kept]
    assert len(cells) == len(set(cells))


# ----------------------------------------------------------------------------- audio timeline
def test_timeline_joins_jitter_fills_gaps_trims_overlap():
    c = StreamCounters()
    tl = AudioTimeline(c)
    tl.add(0.0, np.ones(1600, np.float32))
    tl.add(0.1 + 0.005, np.full(1600, 2, np.float32))  # 5 ms jitter: joined exactly
    assert tl.end_index == 3200
    tl.add(0.5, np.full(1600, 3, np.float32))  # gap 0.2..0.5 s
    tl.add(0.55, np.full(1600, 4, np.float32))  # overlaps 0.55..0.6: head trimmed
    out, n_real = tl.take(0, 16000)
    assert out.shape == (16000,)
    assert np.all(out[:1600] == 1) and np.all(out[1600:3200] == 2)
    assert np.all(out[3200:8000] == 0)
    assert np.all(out[8000:9600] == 3) and np.all(out[9600:8800 + 1600] == 4)
    assert n_real == 3200 + 1600 + 800
    assert c.audio_late_samples == 0


def test_timeline_late_samples_counted_preroll_silent():
    c = StreamCounters()
    tl = AudioTimeline(c)
    tl.add(-0.05, np.ones(1600, np.float32))  # 800 samples before t=0: pre-roll
    out, n_real = tl.take(0, 1600)
    assert n_real == 800 and c.audio_late_samples == 0
    tl.add(0.05, np.ones(1600, np.float32))  # 800 samples before the taken point 0.1 s: late
    assert c.audio_late_samples == 800
    out, n_real = tl.take(1600, 3200)
    assert n_real == 800


# ----------------------------------------------------------------------------- windower
def av_items(seconds: float, *, video_hz: float = 30.0, block: int = 1600, t_audio0: float = 0.0):
    """Continuous ramp audio (value = sample index) and frames at video_hz, interleaved by time."""
    items = []
    n = round(seconds * SR)
    for start in range(0, n, block):
        x = np.arange(start, min(n, start + block), dtype=np.float32)
        items.append(AudioChunk(t_audio0 + start / SR, x))
    for i in range(int(seconds * video_hz)):
        items.append(VideoFrame(i / video_hz, img(i % 256)))
    items.sort(key=lambda it: it.pts_s if isinstance(it, VideoFrame) else it.end_s)
    return items


@pytest.mark.parametrize("window_s, fps", [(2.0, 2.0), (4.0, 2.0), (6.0, 1.0), (2.0, 5.0)])
def test_windows_exact_samples_and_frames_inside(window_s, fps):
    w = Windower(window_s=window_s, fps=fps)
    out = feed(w, av_items(12.0)) + w.end({"audio", "video"})
    assert [x.t0_s for x in out] == [k * window_s for k in range(int(12 / window_s))]
    audio = np.concatenate([x.audio for x in out])
    np.testing.assert_array_equal(audio, np.arange(12 * SR, dtype=np.float32))
    per_window = round(window_s * fps)
    for x in out:
        assert x.audio.shape == (round(window_s * SR),) and x.audio.dtype == np.float32
        assert x.duration_s == window_s
        assert x.num_frames == per_window
        assert np.all(x.frame_pts_s >= x.t0_s) and np.all(x.frame_pts_s < x.t1_s)
        np.testing.assert_allclose(np.diff(x.frame_pts_s), 1 / fps, atol=1 / 30 + 1e-9)
        assert x.frames.shape[1:] == (4, 6, 3) and x.frames.dtype == np.uint8


@settings(max_examples=40, deadline=None)
@given(blocks=st.lists(st.integers(1, 5000), min_size=1, max_size=60), video_hz=st.sampled_from([7.0, 25.0, 30.0]))
def test_any_chunking_gives_exact_windows(blocks, video_hz):
    """Whatever the block sizes, windows hold exactly the input samples, in order, and frames inside."""
    total = sum(blocks)
    items, start = [], 0
    for b in blocks:
        items.append(AudioChunk(start / SR, np.arange(start, start + b, dtype=np.float32)))
        start += b
    seconds = total / SR
    items += [VideoFrame(i / video_hz, img()) for i in range(int(seconds * video_hz))]
    items.sort(key=lambda it: it.pts_s if isinstance(it, VideoFrame) else it.end_s)
    w = Windower(window_s=2.0, fps=2.0, min_tail_s=0.0)
    out = feed(w, items) + w.end({"audio", "video"})
    for x in out:
        assert x.audio.shape[0] in (0, 32000)
        assert np.all((x.frame_pts_s >= x.t0_s) & (x.frame_pts_s < x.t1_s))
    audio = np.concatenate([x.audio for x in out]) if out else np.zeros(0, np.float32)
    np.testing.assert_array_equal(audio[:total], np.arange(total, dtype=np.float32))
    assert np.all(audio[total:] == 0)


def test_windows_wait_for_both_kinds():
    w = Windower()
    assert feed(w, [AudioChunk(0.0, np.zeros(32000, np.float32))]) == []  # video has not passed 2.0 s
    assert feed(w, [VideoFrame(0.0, img()), VideoFrame(1.9, img())]) == []
    out = feed(w, [VideoFrame(2.0, img())])
    assert len(out) == 1 and out[0].num_frames == 4  # on the grid: slots 0.5 and 1.5 repeat their nearest
    np.testing.assert_allclose(out[0].frame_pts_s, [0.0, 0.5, 1.0, 1.5])


def test_close_until_makes_video_only_windows_when_mic_is_silent():
    c = StreamCounters()
    w = Windower(counters=c)
    feed(w, [VideoFrame(t, img()) for t in (0.0, 0.5, 1.0, 1.5, 2.0, 2.5)])
    out = w.close_until(2.2)
    assert len(out) == 1
    assert out[0].audio.shape == (0,) and out[0].duration_s == 2.0 and out[0].num_frames == 4
    # audio that comes back later than its window is late: counted, not silently lost
    feed(w, [AudioChunk(1.9, np.ones(3200, np.float32))])
    assert c.audio_late_samples == 1600


def test_close_until_pads_partial_audio_and_makes_audio_only_windows():
    c = StreamCounters()
    w = Windower(counters=c)
    feed(w, [AudioChunk(0.0, np.ones(16000, np.float32))])  # 1 s of audio, then the mic stalls
    out = w.close_until(4.0)
    assert [x.t0_s for x in out] == [0.0]  # window [2, 4) has nothing at all: skipped, counted
    assert out[0].audio.shape == (32000,) and np.all(out[0].audio[16000:] == 0) and out[0].num_frames == 0
    assert c.audio_padded_samples == 16000 and c.windows_skipped_empty == 1


def test_late_video_counted():
    c = StreamCounters()
    w = Windower(counters=c, has_audio=False)
    feed(w, [VideoFrame(0.0, img()), VideoFrame(2.1, img())])
    feed(w, [VideoFrame(1.0, img())])
    assert c.video_late == 1


def test_tail_rule_and_duration():
    w = Windower()
    out = feed(w, av_items(4.4)) + w.end({"audio", "video"})
    assert [x.t0_s for x in out] == [0.0, 2.0]  # a 0.4 s tail is not a window
    w = Windower()
    out = feed(w, av_items(4.6)) + w.end({"audio", "video"})
    assert [x.t0_s for x in out] == [0.0, 2.0, 4.0]
    assert out[-1].audio.shape == (32000,) and np.all(out[-1].audio[int(0.6 * SR) + 1:] == 0)
    w = Windower(duration_s=3.0)
    out = feed(w, av_items(12.0))
    assert [x.t0_s for x in out] == [0.0, 2.0] and w.done
    assert feed(w, av_items(1.0)) == []


def test_video_only_and_audio_only_windowers():
    w = Windower(has_audio=False)
    out = feed(w, [VideoFrame(i / 10, img()) for i in range(50)]) + w.end({"video"})
    assert [x.audio.shape for x in out] == [(0,), (0,), (0,)]
    assert [x.num_frames for x in out] == [4, 4, 4]  # the 1-s tail is put on the grid too
    w = Windower(has_video=False)
    out = feed(w, [AudioChunk(k * 0.1, np.ones(1600, np.float32)) for k in range(40)])
    assert len(out) == 2 and all(x.num_frames == 0 for x in out)


def test_stack_frames_resizes_odd_sizes():
    frames = stack_frames([img(1, 4, 6), img(2, 8, 12), img(3, 4, 6)])
    assert frames.shape == (3, 4, 6, 3)
    assert frames[1].max() == 2


# ----------------------------------------------------------------------------- the model's grid (one place)
def test_a_slow_jittery_camera_gives_windows_exactly_on_the_grid():
    """1.4 fps with jitter into a 2-fps windower: every window has exactly window_s * fps frames at t0 + k / fps
    (slots no frame fell into repeat the nearest, counted) and exactly window_s * 16 kHz samples."""
    c = StreamCounters()
    w = Windower(window_s=4.0, fps=2.0, counters=c)
    rng = np.random.default_rng(0)
    times = np.arange(0.0, 12.0, 1 / 1.4) + rng.uniform(-0.05, 0.05, 17).clip(0, None)
    items = [VideoFrame(float(t), img(i % 250 + 1)) for i, t in enumerate(times)]
    items += [AudioChunk(k * 0.1, np.ones(1600, np.float32)) for k in range(120)]
    items.sort(key=lambda it: it.pts_s)
    out = feed(w, items) + w.end({"audio", "video"})
    assert [x.t0_s for x in out] == [0.0, 4.0, 8.0]
    for x in out:
        assert x.num_frames == 8 and x.audio.shape == (64000,)
        np.testing.assert_allclose(x.frame_pts_s, x.t0_s + np.arange(8) / 2.0)
        check_on_grid(x, 2.0, 4.0)  # what the engine checks
        assert on_grid(x, 2.0, 4.0) is x  # already on the grid: nothing is sampled or padded a second time
    assert c.video_frames_repeated == 3 * 8 - c.video_frames_in > 0


def test_video_far_ahead_of_audio_is_emitted_not_dropped():
    """Audio stuck at 0.5 s while 30 s of video arrive (a track that stopped, a skewed file): the pending frames
    are bounded by emitting the oldest windows early, never by dropping frames."""
    c = StreamCounters()
    w = Windower(counters=c)
    out = feed(w, [AudioChunk(0.0, np.ones(8000, np.float32))] + [VideoFrame(k / 2, img(k + 1)) for k in range(60)])
    assert 0 < len(out) < 15 and all(x.num_frames == 4 for x in out)
    out += w.end({"audio", "video"})
    assert [x.t0_s for x in out] == [2.0 * k for k in range(15)]
    assert [int(f.max()) for x in out for f in x.frames] == list(range(1, 61))  # every frame, in order
    assert c.video_dropped == 0 and c.video_frames_repeated == 0


def test_on_grid_puts_a_hand_made_window_on_the_grid_and_pads_its_audio_once():
    frames = np.stack([img(v) for v in (10, 20, 30, 40, 50)])
    w = Window(6.0, np.ones(20000, np.float32), frames, 6.0 + np.array([0.02, 0.4, 1.1, 1.45, 1.9]), duration_s=2.0)
    with pytest.raises(ValueError, match="5 frames, 20000 samples.*on_grid"):
        check_on_grid(w, 2.0, 2.0)
    g = on_grid(w, 2.0, 2.0)
    assert [int(f.max()) for f in g.frames] == [10, 20, 30, 50]  # first frame in each slot, else the nearest
    np.testing.assert_allclose(g.frame_pts_s, [6.0, 6.5, 7.0, 7.5])
    assert g.audio.shape == (32000,) and g.audio[:20000].min() == 1 and np.all(g.audio[20000:] == 0)
    assert on_grid(g, 2.0, 2.0) is g
    long = Window(0.0, np.ones(40000, np.float32), np.zeros((0, 0, 0, 3), np.uint8), np.zeros(0), duration_s=2.0)
    assert on_grid(long, 2.0, 2.0).audio.shape == (32000,) and on_grid(long, 2.0, 2.0).num_frames == 0
    silent = Window(0.0, np.zeros(0, np.float32), frames[:1], np.array([0.3]), duration_s=2.0)
    assert on_grid(silent, 2.0, 2.0).audio.size == 0 and on_grid(silent, 2.0, 2.0).num_frames == 4


# ----------------------------------------------------------------------------- clocks
def test_manual_clock_sleep_advances():
    c = ManualClock(5.0)
    assert c.now() == 5.0
    assert c.sleep(1.5) is False
    assert c.now() == 6.5
    with pytest.raises(ValueError):
        c.advance(-1)


async def test_clocks_async_sleep():
    c = ManualClock()
    await c.asleep(2.0)
    assert c.now() == 2.0
    m = MonotonicClock()
    t = m.now()
    await m.asleep(0.01)
    assert m.now() >= t


def test_a_manual_clock_without_autoadvance_wakes_thread_sleepers_only_when_advanced():
    c = ManualClock(autoadvance=False)
    woke: list[float] = []
    th = threading.Thread(target=lambda: (c.sleep(1.0), woke.append(c.now())))
    th.start()
    c.advance(0.5)
    th.join(0.2)
    assert th.is_alive() and woke == []  # half way there: still asleep
    c.advance(0.5)
    th.join(5)
    assert woke == [1.0]
    stop = threading.Event()
    stop.set()
    assert c.sleep(10.0, stop) is True and c.now() == 1.0  # an interrupt wakes it; time does not move


async def test_a_manual_clock_without_autoadvance_wakes_loop_sleepers_only_when_advanced():
    c = ManualClock(autoadvance=False)
    sleeper = asyncio.ensure_future(c.asleep(2.0))
    await asyncio.sleep(0)
    c.advance(1.0)
    await asyncio.sleep(0)
    assert not sleeper.done()
    await asyncio.to_thread(c.advance_to, 2.0)  # from another thread too
    await asyncio.wait_for(sleeper, 5)
    assert c.now() == 2.0
