"""Helpers shared by the model-level tests (tiny adapters, synthetic clips and windows)."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from omnizip.adapters.loading import _wrap
from omnizip_stream.window import Window


def make_adapter(bundle, **kwargs):
    """Adapter around a tiny bundle with the family's default pixel budget (as ``reference_inputs``)."""
    kwargs.setdefault("system_prompt", "")  # the template's own default system prompt, as the reference
    return _wrap(bundle.family, bundle.thinker, bundle.tokenizer, {"model_name": "tiny", **kwargs})


def synthetic_clip(seconds: float, *, seed: int = 0, size: tuple[int, int] = (112, 112), fps: float = 2.0,
                   audio: bool = True, video: bool = True):
    """Tone + noise audio (16 kHz float32) and moving-gradient uint8 frames at ``fps``; deterministic per seed."""
    rng = np.random.default_rng(seed)
    wav = None
    if audio:
        t = np.arange(int(seconds * 16000)) / 16000
        wav = (0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    frames = None
    if video:
        n = max(1, int(round(seconds * fps)))
        h, w = size
        yy, xx = np.mgrid[0:h, 0:w]
        frames = np.stack([
            np.stack([(xx * 2 + 9 * i) % 256, (yy * 3 + 5 * i) % 256, rng.integers(0, 256, (h, w))], -1)
            for i in range(n)
        ]).astype(np.uint8)
    return wav, frames


def clip_windows(wav, frames, window_s: float = 2.0, fps: float = 2.0, t0_s: float = 0.0) -> list[Window]:
    """Cut a synthetic clip into stream windows (frames at ``t0 + k / fps``)."""
    n_windows = int(round((len(wav) / 16000 if wav is not None else len(frames) / fps) / window_s))
    out = []
    per = int(window_s * fps)
    for i in range(n_windows):
        a = wav[int(i * window_s * 16000): int((i + 1) * window_s * 16000)] if wav is not None else np.zeros(0, np.float32)
        f = frames[i * per:(i + 1) * per] if frames is not None else np.zeros((0, 0, 0, 3), np.uint8)
        pts = t0_s + i * window_s + np.arange(len(f)) / fps
        out.append(Window(t0_s + i * window_s, a, f, pts, duration_s=window_s))
    return out


TONE_HZ = 440.0


def make_media(
    path: Path,
    *,
    seconds: float = 2.0,
    video: bool = True,
    audio: bool = True,
    width: int = 160,
    height: int = 120,
    rate: int = 30,
    audio_rate: int = 48000,
    layout: str = "stereo",
    tone_hz: float = TONE_HZ,
    container_options: dict[str, str] | None = None,
    fmt: str | None = None,
    gop: int | None = None,
) -> Path:
    """Encode a real test clip with PyAV: a bright bar moving right (its x position encodes the frame
    index) and a sine tone, or one of them; ``.wav`` paths get PCM audio.

    Video frame i has columns [0, i) bright, so a decoded frame tells which source frame it was.
    ``gop`` sets the keyframe interval in frames (x264's default, 250, when None).
    Deterministic for the same arguments.
    """
    import av

    out = av.open(str(path), "w", format=fmt, options=container_options or {})
    vs = aus = None
    if video:
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "18", **({"g": str(gop)} if gop else {})}
    pcm = str(path).endswith(".wav")
    if audio:
        aus = out.add_stream("pcm_s16le" if pcm else "aac", rate=audio_rate)
        aus.layout = layout
    channels = 2 if layout == "stereo" else 1
    n_video = round(seconds * rate)
    n_samples = round(seconds * audio_rate)
    done_audio = 0
    i = 0
    while (video and i < n_video) or (audio and done_audio < n_samples):
        if video and i < n_video:
            img = np.full((height, width, 3), 30, np.uint8)
            img[:, : min(width, i)] = 220
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, rate)
            for p in vs.encode(frame):
                out.mux(p)
        target = min(n_samples, round((i + 1) / rate * audio_rate)) if video else n_samples
        while audio and done_audio < target:
            n = min(1024, target - done_audio)
            t = np.arange(done_audio, done_audio + n) / audio_rate
            x = (0.5 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
            if pcm:
                pcm16 = (np.repeat(x, channels) * 32767).astype(np.int16)[None, :]
                a = av.AudioFrame.from_ndarray(pcm16, format="s16", layout=layout)
            else:
                a = av.AudioFrame.from_ndarray(np.tile(x, (channels, 1)), format="fltp", layout=layout)
            a.sample_rate, a.pts, a.time_base = audio_rate, done_audio, Fraction(1, audio_rate)
            done_audio += n
            for p in aus.encode(a):
                out.mux(p)
        i += 1
    for s in (vs, aus):
        if s is not None:
            for p in s.encode():
                out.mux(p)
    out.close()
    return path


def wait_for_text(log, text: str, timeout_s: float = 120.0) -> str:
    """Poll the file object ``log`` (a subprocess's output) until it contains ``text``; return its content.

    Raises:
        AssertionError: ``text`` did not appear within ``timeout_s`` (the end of the log is shown).
    """
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        log.seek(0)
        content = log.read()
        if text in content:
            return content
        time.sleep(0.2)
    log.seek(0)
    raise AssertionError(f"{text!r} not seen in:\n{log.read()[-3000:]}")
