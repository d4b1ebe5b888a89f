"""File source (paced and unpaced, looping), offline decode_clip, and every bad-file error path."""

from __future__ import annotations

import time

import numpy as np
import pytest

from omnizip_stream.media import Clip, MediaError, decode_clip
from omnizip_stream.sources import SourceError, open_windows
from omnizip_stream.sources.file import FileSource

from .conftest import TONE_HZ, dominant_hz


async def collect(spec: str, **kw):
    async with open_windows(spec, **kw) as windows:
        out = [w async for w in windows]
        return out, windows.counters.snapshot()


def bar_index(frame: np.ndarray) -> int:
    """Which source frame this is: the test clips light up columns [0, i) of frame i (at 160 px)."""
    row = frame[frame.shape[0] // 2, :, 0].astype(int)
    return round((row > 125).sum() * 160 / frame.shape[1])


# ----------------------------------------------------------------------------- unpaced windows
async def test_unpaced_file_windows_exact(media):
    t = time.monotonic()
    wins, counters = await collect(f"file:{media.av_long_mp4}", realtime=False)
    assert time.monotonic() - t < 30  # sanity only; the point is that it does not wait for real time
    assert [w.t0_s for w in wins] == [0.0, 2.0, 4.0]  # the 0.5 s tail is a (padded) window
    for w in wins:
        assert w.audio.shape == (32000,) and w.audio.dtype == np.float32
        assert np.all((w.frame_pts_s >= w.t0_s) & (w.frame_pts_s < w.t1_s))
    assert [w.num_frames for w in wins] == [4, 4, 4]  # on the model's grid: the tail repeats its one frame
    # frames are the source frames at 0, 0.5, 1.0 ... s (30 fps: source frame 15 * k)
    idx = [bar_index(f) for w in wins for f in w.frames]
    assert idx == [15 * k for k in range(9)] + [15 * 8] * 3
    np.testing.assert_allclose(np.concatenate([w.frame_pts_s for w in wins]), np.arange(12) * 0.5, atol=1e-6)
    assert counters["video_frames_repeated"] == 3
    assert abs(dominant_hz(wins[0].audio) - TONE_HZ) < 5
    assert 0.4 < float(np.abs(wins[1].audio).max()) < 0.6  # stereo averaged to mono, not summed
    assert counters["video_dropped"] == 0 and counters["audio_dropped_samples"] == 0
    assert counters["audio_padded_samples"] > 0  # the tail window


@pytest.mark.parametrize("name", ["wav_mono_44k", "m4a_stereo_44k", "mkv_mono_48k", "av_mp4"])
async def test_resampled_to_16k_mono(media, name):
    wins, _ = await collect(f"file:{getattr(media, name)}", realtime=False)
    assert len(wins) == 1
    w = wins[0]
    assert w.audio.shape == (32000,)
    assert abs(dominant_hz(w.audio) - TONE_HZ) < 5
    rms = float(np.sqrt(np.mean(w.audio[1000:-1000] ** 2)))
    assert 0.3 < rms < 0.4  # 0.5 amplitude sine -> rms 0.354
    assert w.num_frames == (0 if name in ("wav_mono_44k", "m4a_stereo_44k") else 4)


async def test_video_only_file_gives_video_only_windows(media):
    wins, _ = await collect(str(media.video_only), realtime=False)  # a bare existing path works too
    assert len(wins) == 1
    assert wins[0].audio.shape == (0,) and wins[0].duration_s == 2.0 and wins[0].num_frames == 4


async def test_max_side_scales_at_decode(media):
    wins, _ = await collect(f"file:{media.av_mp4}", realtime=False, max_side=80)
    assert wins[0].frames.shape == (4, 60, 80, 3)
    wins, _ = await collect(f"file:{media.av_mp4}", realtime=False, max_side=None, fps=5.0)
    assert wins[0].frames.shape == (10, 120, 160, 3)


async def test_loop_continues_time(media):
    wins, _ = await collect(f"file:{media.av_mp4}", realtime=False, loop=True, duration_s=6.0)
    assert [w.t0_s for w in wins] == [0.0, 2.0, 4.0]
    pts = np.concatenate([w.frame_pts_s for w in wins])
    np.testing.assert_allclose(pts, np.arange(12) * 0.5, atol=1e-6)
    assert all(w.audio.shape == (32000,) for w in wins)
    assert [bar_index(f) for f in wins[1].frames] == [0, 15, 30, 45]  # the clip again


# ----------------------------------------------------------------------------- paced replay
async def test_paced_replay_takes_about_real_time(media):
    t = time.monotonic()
    wins, counters = await collect(f"file:{media.av_mp4}", realtime=True)
    elapsed = time.monotonic() - t
    assert len(wins) == 1 and wins[0].audio.shape == (32000,) and wins[0].num_frames == 4
    assert elapsed >= 1.5  # 2 s of media is not delivered faster than real time (generous bound)
    assert counters["video_dropped"] == 0


async def test_unpaced_source_is_faster_than_paced(media):
    t = time.monotonic()
    await collect(f"file:{media.av_mp4}", realtime=False)
    assert time.monotonic() - t < 1.5


# ----------------------------------------------------------------------------- decode_clip
def test_decode_clip(media):
    clip = decode_clip(media.av_mp4, fps=2.0)
    assert isinstance(clip, Clip)
    assert clip.has_audio and clip.has_video and clip.sample_rate_hz == 16000
    assert clip.frames.shape == (4, 120, 160, 3) and clip.frames.dtype == np.uint8
    np.testing.assert_allclose(clip.frame_pts_s, [0, 0.5, 1.0, 1.5], atol=1e-6)
    assert clip.audio.dtype == np.float32 and abs(clip.audio.shape[0] - 32000) < 400  # aac padding
    assert 1.99 < clip.duration_s < 2.05
    assert abs(dominant_hz(clip.audio[:32000]) - TONE_HZ) < 5


def test_decode_clip_options(media):
    clip = decode_clip(media.av_long_mp4, fps=None, max_frames=5, max_side=40)
    assert clip.frames.shape == (5, 30, 40, 3)
    assert clip.frame_pts_s[0] == 0.0 and clip.frame_pts_s[-1] == pytest.approx(134 / 30)
    assert np.all(np.diff(clip.frame_pts_s) > 0)
    audio_only = decode_clip(media.wav_mono_44k)
    assert not audio_only.has_video and audio_only.frames.shape[0] == 0
    assert audio_only.audio.shape == (32000,)
    video_only = decode_clip(media.video_only, fps=1.0)
    assert not video_only.has_audio and video_only.audio.shape == (0,) and video_only.frames.shape[0] == 2
    with pytest.raises(ValueError, match="fps"):
        decode_clip(media.av_mp4, fps=0)
    with pytest.raises(ValueError, match="max_frames"):
        decode_clip(media.av_mp4, max_frames=0)


def test_decode_clip_same_decode_as_file_source(media):
    """decode_clip and the file source share the decode loop: identical audio and frames."""
    import asyncio

    clip = decode_clip(media.av_mp4, fps=2.0)
    wins, _ = asyncio.run(collect(f"file:{media.av_mp4}", realtime=False, max_side=None))
    np.testing.assert_array_equal(wins[0].audio, clip.audio[:32000])
    np.testing.assert_array_equal(wins[0].frames, clip.frames)


# ----------------------------------------------------------------------------- error paths
BAD = [
    ("missing", "no such file"),
    ("not_media", "not a media file"),
    ("empty", "empty"),
    ("truncated_mp4", "corrupt or truncated"),
    ("truncated_faststart", "truncated"),
    ("truncated_ts", "corrupt or truncated"),
    ("unknown_codec", "unsupported codec"),
    ("no_streams", "no audio or video stream"),
    ("directory", "directory"),
]


def bad_path(media, tmp_path, name):
    if name == "missing":
        return tmp_path / "nope.mp4"
    if name == "directory":
        return tmp_path
    return getattr(media, name)


@pytest.mark.parametrize("name, words", BAD)
def test_decode_clip_errors_are_one_line(media, tmp_path, name, words):
    path = bad_path(media, tmp_path, name)
    with pytest.raises(MediaError) as info:
        decode_clip(path)
    msg = str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, SourceError)
    assert "\n" not in msg and words in msg and str(path) in msg


# A file whose media is damaged after a good start is played by the file source (what decodes), not refused.
DAMAGED = ("truncated_faststart", "truncated_ts")


@pytest.mark.parametrize("name, words", [b for b in BAD if b[0] not in DAMAGED])
async def test_file_source_errors_are_one_line(media, tmp_path, name, words):
    """Open-time problems raise from open_windows."""
    path = bad_path(media, tmp_path, name)
    with pytest.raises(SourceError) as info:
        async with open_windows(f"file:{path}", realtime=False) as windows:
            async for _ in windows:
                pass
    assert "\n" not in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("name", DAMAGED)
async def test_file_source_plays_what_decodes_of_a_damaged_file(media, name, caplog):
    wins, _ = await collect(f"file:{getattr(media, name)}", realtime=False)
    assert len(wins) == 1 and wins[0].num_frames >= 1 and wins[0].audio.shape == (32000,)
    assert "truncated" in caplog.text or "corrupt" in caplog.text


async def test_file_source_kinds_and_aclose_is_idempotent(media):
    src = FileSource(media.av_mp4, realtime=False)
    await src.start()
    assert src.kinds == frozenset({"audio", "video"}) and src.kind == "audio+video"
    first = await src.recv()
    assert first.pts_s == pytest.approx(0.0, abs=1e-3)
    await src.aclose()
    await src.aclose()
