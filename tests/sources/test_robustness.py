"""Media input the user's environment produces: damaged files, FIFOs, stills and 0.1-s clips, mistyped
paths, live streams with a long keyframe interval, and ``--duration`` honoured exactly (issues 11, 12)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from omnizip_stream.clock import ManualClock
from omnizip_stream.media import MediaError, decode_clip
from omnizip_stream.sources import SourceError, open_windows, parse_spec

from .conftest import make_media

DAMAGE_BYTES = 20_000


def damaged_copy(src: Path, dst: Path, seed: int = 0) -> Path:
    """``src`` with ``DAMAGE_BYTES`` random bytes written over its middle (the container structure is kept)."""
    raw = bytearray(src.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + DAMAGE_BYTES] = np.random.default_rng(seed).integers(0, 256, DAMAGE_BYTES, np.uint8).tobytes()
    dst.write_bytes(bytes(raw))
    return dst


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8-s clips (h264 + aac, a keyframe per second) in three containers, each damaged in the middle."""
    d = tmp_path_factory.mktemp("damaged")
    out = {}
    for ext, fmt in (("mp4", None), ("mkv", None), ("ts", "mpegts")):
        clean = make_media(d / f"clean.{ext}", seconds=8.0, rate=15, fmt=fmt, gop=15)
        out[ext] = damaged_copy(clean, d / f"damaged.{ext}")
    return out


async def collect(spec: str, **kw):
    async with open_windows(spec, **kw) as windows:
        out = [w async for w in windows]
        return out, windows.counters.snapshot()


# ----------------------------------------------------------------------------- damaged in the middle
@pytest.mark.parametrize("ext", ["mp4", "mkv", "ts"])
async def test_file_damaged_in_the_middle_keeps_going_and_counts(damaged, ext, caplog):
    with caplog.at_level(logging.WARNING):
        wins, counters = await collect(f"file:{damaged[ext]}", realtime=False, max_side=80)
    assert [w.t0_s for w in wins] == [0.0, 2.0, 4.0, 6.0]  # the windows after the damage are there
    assert all(w.audio.shape == (32000,) for w in wins)
    assert wins[-1].num_frames >= 3 and float(wins[-1].frame_pts_s.max()) > 7.0
    assert counters["corrupt_packets"] >= 1
    warned = [r for r in caplog.records if "corrupt data" in r.getMessage()]
    assert len(warned) == 1 and "corrupt_packets" in warned[0].getMessage()  # once, not per packet


def test_decode_clip_still_refuses_a_damaged_file(damaged):
    """``infer`` answers about one clip: it says the clip is damaged instead of answering from part of it."""
    with pytest.raises(MediaError, match="corrupt or truncated"):
        decode_clip(damaged["mp4"])


def test_cli_stream_on_a_damaged_file_exits_0_and_reports_the_count(damaged):
    proc = subprocess.run(
        [sys.executable, "-m", "omnizip_stream.cli", "stream", "--source", f"file:{damaged['mp4']}", "--no-realtime",
         "--no-interactive", "--model", "tiny", "--ask", "what happens?", "max_new_tokens=2",
         "video_max_pixels=12544"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = next(line for line in proc.stdout.splitlines() if line.startswith("summary:"))
    assert "windows 4" in summary and "corrupt packets " in summary
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- open that never returns
@pytest.mark.timeout(30)
async def test_fifo_nobody_writes_to_is_an_error_not_a_hang(tmp_path):
    fifo = tmp_path / "cam.fifo"
    os.mkfifo(fifo)
    t = time.monotonic()
    with pytest.raises(MediaError) as info:
        async with open_windows(f"file:{fifo}", open_timeout_s=1.0):
            pass
    assert time.monotonic() - t < 5
    msg = str(info.value)
    assert "named pipe (FIFO)" in msg and str(fifo) in msg and "1 s" in msg and "\n" not in msg
    with pytest.raises(MediaError, match="FIFO"):
        decode_clip(fifo, open_timeout_s=0.5)
    assert parse_spec(str(fifo)).kind == "file"  # a bare path to a FIFO is a file spec, not "unknown source"
    for th in [th for th in threading.enumerate() if th.name == "open-with-deadline"]:
        th.join(5)  # the blocked open was woken up: no thread left behind
    assert not any(th.name == "open-with-deadline" for th in threading.enumerate())


# ----------------------------------------------------------------------------- nothing to answer from
def write_png(path: Path) -> Path:
    import av

    out = av.open(str(path), "w")
    s = out.add_stream("png")
    s.width, s.height, s.pix_fmt = 64, 48, "rgb24"
    frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
    frame.pts, frame.time_base = 0, Fraction(1, 25)
    for p in [*s.encode(frame), *s.encode()]:
        out.mux(p)
    out.close()
    return path


async def test_still_image_is_explained(tmp_path):
    png = write_png(tmp_path / "photo.png")
    with pytest.raises(MediaError) as info:
        await collect(f"file:{png}", realtime=False)
    msg = str(info.value)
    assert "still image" in msg and "\n" not in msg
    # never advice that fails: `omnizip infer` refuses a still image too (tests/cli/test_validation.py)
    assert "infer" not in msg


async def test_clip_shorter_than_a_window_is_an_error_not_an_empty_stream(tmp_path):
    short = make_media(tmp_path / "short.mp4", seconds=0.1)
    with pytest.raises(MediaError) as info:
        await collect(f"file:{short}", realtime=False)
    msg = str(info.value)
    assert "too short for one window" in msg and "0.1" in msg and "2 s" in msg and str(short) in msg


def test_cli_stream_on_a_short_clip_says_so(tmp_path):
    short = make_media(tmp_path / "short.mp4", seconds=0.1)
    proc = subprocess.run(
        [sys.executable, "-m", "omnizip_stream.cli", "stream", "--source", f"file:{short}", "--no-realtime",
         "--no-interactive", "--model", "tiny", "--ask", "what happens?", "max_new_tokens=2"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "too short for one window" in proc.stderr
    assert "A: " not in proc.stdout and "Traceback" not in proc.stderr  # not answered from nothing


# ----------------------------------------------------------------------------- spec mistakes
def test_missing_path_says_no_such_file_and_unknown_kinds_list_the_valid_ones(tmp_path):
    for spec in ("media/nope.mp4", "nope.mp4", "./clip", "~/videos/cat.mkv"):
        with pytest.raises(MediaError, match="no such file") as info:
            parse_spec(spec)
        assert spec in str(info.value)
    with pytest.raises(MediaError, match="is a directory"):
        parse_spec(str(tmp_path))
    with pytest.raises(SourceError) as info:
        parse_spec("cam:0")
    assert "unknown source kind 'cam'" in str(info.value) and "camera" in str(info.value) and "file:PATH" in str(
        info.value)


def test_cli_missing_file_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "omnizip_stream.cli", "stream", "--source", "media/nope.mp4",
                           "--no-interactive"], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("note:")]
    assert proc.returncode == 2 and len(lines) == 1 and "media/nope.mp4: no such file" in lines[0]


# ----------------------------------------------------------------------------- long keyframe interval
@pytest.mark.timeout(60)
async def test_live_stream_with_a_long_keyframe_interval_warns_once_and_counts(ts_server, caplog):
    """A camera with a 250-frame GOP (16 s at 15 fps), joined 1 s after a keyframe: audio-only windows."""
    port = ts_server(seconds=5.0, gop=250, join_s=1.0, wait=True)
    wins = []
    with caplog.at_level(logging.WARNING), pytest.raises(SourceError):  # the server goes away after 5 s
        async with open_windows(f"tcp://127.0.0.1:{port}", url_attempts=1, max_side=80) as windows:
            try:
                async for w in windows:
                    wins.append(w)
            finally:
                counters = windows.counters.snapshot()
    no_video = [w for w in wins if w.audio.size and not w.num_frames]
    assert len(no_video) >= 1 and all(w.audio.shape == (32000,) for w in no_video)
    assert counters["windows_without_video"] == len(no_video)
    assert counters["corrupt_packets"] == 0  # waiting for a keyframe is not damage
    warned = [r for r in caplog.records if "keyframe" in r.getMessage()]
    assert len(warned) == 1 and "windows_without_video" in warned[0].getMessage()


# ----------------------------------------------------------------------------- --duration
async def test_duration_is_exact_and_the_end_is_not_a_drop():
    """Synthetic, paced on a manual clock (so the source runs flat out; no live deadline forces windows out):
    3 s -> windows 0-2 and 2-4 s with media only before 3 s, and nothing dropped (counted) while the consumer
    is still busy after the end."""
    async with open_windows("synthetic:size=32x24", duration_s=3.0, realtime=True, clock=ManualClock(),
                            max_latency_s=1e6) as windows:
        wins = [w async for w in windows]
        await asyncio.sleep(0.3)  # the consumer still answering questions after the last window
        counters = windows.counters.snapshot()
    assert [w.t0_s for w in wins] == [0.0, 2.0]
    # on the grid, the slots at and after 3 s repeat the last frame before it: no media from beyond the end
    np.testing.assert_array_equal(wins[-1].frames[2], wins[-1].frames[1])
    np.testing.assert_array_equal(wins[-1].frames[3], wins[-1].frames[1])
    assert counters["video_frames_repeated"] == 2
    assert np.count_nonzero(wins[-1].audio[:16000]) > 15000 and np.count_nonzero(wins[-1].audio[16000:]) == 0
    assert counters["video_dropped"] == 0 and counters["audio_dropped_samples"] == 0
    assert not any(th.name.startswith("src:synthetic") for th in threading.enumerate())


@pytest.mark.timeout(30)
async def test_url_server_that_accepts_but_sends_nothing_is_a_clear_error():
    import socket

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        port = srv.getsockname()[1]
        t = time.monotonic()
        with pytest.raises(SourceError) as info:
            async with open_windows(f"tcp://127.0.0.1:{port}", url_attempts=1, open_timeout_s=1.0):
                pass
    assert time.monotonic() - t < 10
    assert str(info.value) == (f"tcp://127.0.0.1:{port}: no usable stream after 1 attempts "
                               "(no media within 1 s of connecting)")
