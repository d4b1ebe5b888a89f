"""URL source against a local live MPEG-TS server, camera/device errors, and the source spec grammar."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from omnizip_stream.sources import SourceError, list_devices, open_windows, parse_spec
from omnizip_stream.sources.camera import CameraSource, parse_size
from omnizip_stream.sources.devices import DeviceInfo, DeviceList, camera_backend
from omnizip_stream.sources.url import UrlSource, redact

from .conftest import dominant_hz, free_port


# ----------------------------------------------------------------------------- url
@pytest.mark.timeout(60)
async def test_tcp_stream_windows_reconnect_then_clear_error(ts_server):
    """A live TCP MPEG-TS camera: windows with audio and video; the server restarts once (reconnect);
    when it is gone for good the stream ends with a one-line error after the configured attempts."""
    port = ts_server(seconds=3.0, sessions=2)
    wins = []
    with pytest.raises(SourceError) as info:
        async with open_windows(f"tcp://127.0.0.1:{port}", url_attempts=3, max_side=80) as windows:
            try:
                async for w in windows:
                    wins.append(w)
            finally:
                counters = windows.counters.snapshot()
    msg = str(info.value)
    assert "after 3 attempts" in msg and f"127.0.0.1:{port}" in msg and "\n" not in msg
    assert counters["source_restarts"] >= 1
    with_audio = [w for w in wins if w.audio.size]
    with_video = [w for w in wins if w.num_frames]
    assert with_audio and with_video
    assert all(w.audio.shape == (32000,) for w in with_audio)
    assert abs(dominant_hz(max(with_audio, key=lambda w: np.abs(w.audio).sum()).audio) - 440) < 10
    assert all(w.frames.shape[1:] == (60, 80, 3) for w in with_video)  # 160x120 scaled to max_side 80
    t0s = [w.t0_s for w in wins]
    assert t0s == sorted(t0s) and len(set(t0s)) == len(t0s)
    for w in wins:
        assert np.all((w.frame_pts_s >= w.t0_s) & (w.frame_pts_s < w.t1_s))


async def test_url_that_does_not_answer_is_a_clear_error():
    port = free_port()  # nothing listens here
    src = UrlSource(f"tcp://127.0.0.1:{port}", attempts=3, backoff_s=0.05, open_timeout_s=2.0)
    t = time.monotonic()
    with pytest.raises(SourceError) as info:
        await src.start()
    await src.aclose()
    msg = str(info.value)
    assert msg == f"tcp://127.0.0.1:{port}: no usable stream after 3 attempts (Connection refused)"
    assert time.monotonic() - t >= 0.05 + 0.1  # it did back off between attempts


async def test_open_windows_url_error_and_bad_scheme():
    port = free_port()
    with pytest.raises(SourceError, match="after 1 attempts"):
        async with open_windows(f"tcp://127.0.0.1:{port}", url_attempts=1):
            pass
    with pytest.raises(SourceError, match="unsupported URL scheme 'gopher'"):
        async with open_windows("gopher://example"):
            pass


def test_redact_hides_credentials():
    assert redact("rtsp://admin:secret@10.0.0.2:554/stream") == "rtsp://***@10.0.0.2:554/stream"
    assert redact("udp://127.0.0.1:5000") == "udp://127.0.0.1:5000"


# ----------------------------------------------------------------------------- camera and devices
@pytest.mark.skipif(os.path.exists("/dev/video99"), reason="this machine has /dev/video99")
async def test_missing_camera_lists_devices():
    device = "/dev/video99"
    with pytest.raises(SourceError) as info:
        async with open_windows(f"camera:{device}"):
            pass
    msg = str(info.value)
    assert msg.startswith(f"camera {device} not found; cameras: ") and "\n" not in msg


@pytest.mark.skipif(os.path.exists("/dev/video0"), reason="this machine has /dev/video0")
async def test_default_camera_missing_here():
    with pytest.raises(SourceError) as info:
        async with open_windows("camera+mic"):
            pass
    assert str(info.value) == "camera /dev/video0 not found; cameras: none found"


def test_list_devices_is_one_line():
    devices = list_devices()
    assert isinstance(devices, DeviceList)
    text = devices.describe()
    assert "cameras:" in text and "microphones:" in text and "\n" not in text
    fake = DeviceList((DeviceInfo("/dev/video0", "USB cam", True),), (DeviceInfo("3", "pulse"),), ())
    assert fake.describe() == "cameras: /dev/video0 (USB cam) [default]; microphones: 3 (pulse)"


def test_camera_backends_per_platform():
    assert camera_backend("linux") == ("v4l2", "/dev/video0")
    assert camera_backend("darwin") == ("avfoundation", "0")
    assert camera_backend("win32")[0] == "dshow"


def test_camera_options():
    assert parse_size("640x480") == (640, 480) and parse_size((320, 240)) == (320, 240) and parse_size(None) is None
    for bad in ("640", "ax480", "0x480"):
        with pytest.raises(ValueError):
            parse_size(bad)
    cam = CameraSource("/dev/video5", size="320x240", framerate=15, input_format="mjpeg")
    url, opts = cam._url_and_options()
    assert url == "/dev/video5"
    assert opts == {"video_size": "320x240", "framerate": "15", "input_format": "mjpeg"}


# ----------------------------------------------------------------------------- spec grammar
@pytest.mark.parametrize("spec, kind, target", [
    ("camera", "camera", None),
    ("camera+mic", "camera+mic", None),
    ("mic+camera", "camera+mic", None),
    ("MIC", "mic", None),
    ("camera:/dev/video2", "camera", "/dev/video2"),
    ("camera:/dev/video2+mic", "camera+mic", "/dev/video2"),
    ("file:/tmp/a b+c.mp4", "file", "/tmp/a b+c.mp4"),
    ("rtsp://cam.local:554/live", "url", "rtsp://cam.local:554/live"),
    ("https://example.org/x.mp4", "url", "https://example.org/x.mp4"),
    ("udp://127.0.0.1:5000", "url", "udp://127.0.0.1:5000"),
    ("tcp://127.0.0.1:5000", "url", "tcp://127.0.0.1:5000"),
    ("synthetic", "synthetic", None),
])
def test_parse_spec(spec, kind, target):
    parsed = parse_spec(spec)
    assert (parsed.kind, parsed.target) == (kind, target)
    assert parsed.live == (kind in ("camera", "camera+mic", "mic", "url"))


def test_parse_spec_synthetic_options_and_errors():
    assert parse_spec("synthetic:seed=3, size=64x48").options == {"seed": "3", "size": "64x48"}
    for bad, words in [("", "empty"), ("webcam", "unknown source 'webcam'"), ("file:", "needs a path"),
                       ("synthetic:colour=red", "unknown synthetic option"), ("ftp://x", "unsupported URL scheme")]:
        with pytest.raises(SourceError) as info:
            parse_spec(bad)
        assert words in str(info.value) and "\n" not in str(info.value)


async def test_open_windows_argument_validation():
    for kw, words in [({"window_s": 3.0, "chunk_s": 2.0}, "multiple"), ({"window_s": 0}, "positive"), ({"fps": 0}, "fps"),
                      ({"max_side": 4}, "max_side")]:
        with pytest.raises(ValueError, match=words):
            async with open_windows("synthetic", **kw):
                pass


@pytest.mark.timeout(60)
async def test_camera_lost_and_back_gives_audio_only_windows_meanwhile(ts_server, caplog):
    """The camera code path with a real PyAV input (MPEG-TS over TCP stands in for /dev/video0, which
    this machine cannot have): the camera drops out, audio-only windows keep coming, it is reopened."""
    import logging

    from omnizip_stream.clock import MonotonicClock
    from omnizip_stream.sources.base import StreamCounters
    from omnizip_stream.sources.mic import MicSource
    from omnizip_stream.sources.stream import WindowStream
    from omnizip_stream.windowing import Windower

    from .test_mic import FakeInputStream, fake_factory

    # session 1 streams 0..2 s, the "camera" is gone until ~5.5 s, session 2 streams ~5.5..7.5 s
    port = ts_server(seconds=2.0, sessions=2, pause_s=3.5, wait=True)
    clock = MonotonicClock()
    t0 = clock.now()
    counters = StreamCounters()
    cam = CameraSource(f"tcp://127.0.0.1:{port}", backoff_s=0.2, backoff_max_s=0.4, fps=2.0, clock=clock,
                       session_t0=t0, counters=counters)
    cam.format = "mpegts"  # the capture loop is format-agnostic; v4l2 itself cannot exist here
    made: list[FakeInputStream] = []
    mic = MicSource(stream_factory=fake_factory([("paced", 10_000)], made), clock=clock, session_t0=t0,
                    counters=counters)
    with caplog.at_level(logging.WARNING):
        for s in (cam, mic):
            await s.start()
        stream = WindowStream([cam, mic], Windower(duration_s=8.0, counters=counters), live=True,
                              clock=clock, session_t0=t0, max_latency_s=0.5)
        stream.start()
        try:
            wins = [w async for w in stream]
        finally:
            await stream.aclose()
    assert [w.t0_s for w in wins] == [0.0, 2.0, 4.0, 6.0]
    assert all(w.audio.shape == (32000,) for w in wins)  # the microphone never stopped
    frames = [w.num_frames for w in wins]
    assert frames[0] > 0 and frames[2] == 0 and frames[3] > 0  # video, an audio-only window, video again
    assert counters.source_restarts == 1
    assert "camera lost" in caplog.text and "camera is back" in caplog.text


@pytest.mark.skipif(os.path.exists("/dev/video99"), reason="this machine has /dev/video99")
async def test_non_strict_camera_missing_at_start_keeps_retrying(caplog):
    import logging

    cam = CameraSource("/dev/video99", strict=False, backoff_s=0.05, backoff_max_s=0.1)
    with caplog.at_level(logging.WARNING):
        await cam.start()  # does not raise
        assert cam.kinds == frozenset({"video"})
        await cam.aclose()
    assert "camera /dev/video99 not found" in caplog.text and "retrying" in caplog.text
    assert CameraSource("2").device == "/dev/video2"  # camera:2 is /dev/video2 on Linux
