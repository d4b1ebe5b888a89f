"""Headless Chromium (Debian's /usr/bin/chromium) with a fake camera and microphone fed from generated files.

Used by the browser tests (``pytest -m browser``) and ``scripts/bench_webrtc.py``: Chromium's own
fake capture devices read a looping ``.y4m`` video and ``.wav`` audio, and the permission prompt is
answered yes, so the page's "Use my camera" runs unattended.
"""

from __future__ import annotations

import math
import os
import shutil
import wave
from pathlib import Path

import numpy as np

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")

__all__ = ["chromium_args", "chromium_path", "make_fake_camera", "make_fake_microphone"]


def chromium_path() -> str | None:
    """The system Chromium (``OMNIZIP_CHROMIUM`` overrides), or None when none is installed."""
    override = os.environ.get("OMNIZIP_CHROMIUM")
    if override:
        return override
    for path in CHROMIUM_CANDIDATES:
        if os.path.exists(path):
            return path
    return shutil.which("chromium")


def make_fake_camera(path: Path, *, seconds: float = 4.0, rate: int = 15, width: int = 320, height: int = 240) -> Path:
    """A ``.y4m`` clip Chromium loops as its fake camera: a square moving over a gradient, a progress bar.

    Frames are ``[height, width]`` yuv420p at ``rate`` fps, ``seconds`` long.
    """
    import av

    out = av.open(str(path), "w", format="yuv4mpegpipe")
    stream = out.add_stream("rawvideo", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    ramp = np.linspace(40, 200, width, dtype=np.float32)[None, :, None]
    for i in range(round(seconds * rate)):
        image = np.broadcast_to(ramp * np.array([0.3, 0.6, 1.0], np.float32), (height, width, 3)).copy()
        x = int((i * 7) % (width - 60))
        image[90:150, x:x + 60] = (230, 60, 40)
        image[height - 12:, : int(width * (i + 1) / (seconds * rate))] = 255
        frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24").reformat(format="yuv420p")
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    return path


def make_fake_microphone(path: Path, *, seconds: float = 4.0, rate_hz: int = 48000, tone_hz: float = 440.0) -> Path:
    """A 16-bit mono ``.wav`` Chromium loops as its fake microphone: a tone with a beep every second."""
    t = np.arange(round(seconds * rate_hz)) / rate_hz
    signal = 0.25 * np.sin(2 * math.pi * tone_hz * t) + 0.25 * np.sin(2 * math.pi * 880 * t) * ((t % 1.0) < 0.15)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes((signal * 32767).astype("<i2").tobytes())
    return path


def chromium_args(camera: Path, microphone: Path) -> list[str]:
    """Flags: grant the camera/microphone without a prompt and read them from the generated files."""
    return ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}", f"--use-file-for-fake-audio-capture={microphone}",
            "--autoplay-policy=no-user-gesture-required"]
