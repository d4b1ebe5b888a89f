"""Helpers shared by the model-level tests (tiny adapters, synthetic clips and windows)."""

from __future__ import annotations

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


def write_media(path, *, seconds: float = 4.0, fps: int = 10, size: tuple[int, int] = (160, 120),
                audio: bool = True, video: bool = True, sample_rate: int = 48000, tone_hz: float = 440.0) -> str:
    """Write a small real media file with PyAV: a moving square (h264) and a tone (aac), or one of them.

    ``.wav`` paths get PCM audio only. Deterministic for the same arguments.
    """
    from fractions import Fraction

    import av
    import numpy as np

    path = str(path)
    container = av.open(path, "w")
    vstream = astream = None
    if video and not path.endswith(".wav"):
        vstream = container.add_stream("libx264", rate=fps)
        vstream.width, vstream.height = size
        vstream.pix_fmt = "yuv420p"
        vstream.options = {"preset": "ultrafast", "crf": "30"}
    if audio:
        codec = "pcm_s16le" if path.endswith(".wav") else "aac"
        astream = container.add_stream(codec, rate=sample_rate)
        astream.layout = "mono"
    n_frames = int(round(seconds * fps)) if vstream is not None else 0
    n_samples = int(round(seconds * sample_rate)) if astream is not None else 0
    w, h = size
    block = 1024
    next_sample = 0
    for i in range(max(n_frames, 1)):
        if vstream is not None:
            img = np.zeros((h, w, 3), np.uint8)
            x = int((i * 7) % max(1, w - 20))
            img[h // 3: h // 3 + 20, x: x + 20] = (255, 80, 40)
            img[..., 2] = np.uint8(i * 3 % 256)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in vstream.encode(frame):
                container.mux(packet)
        if astream is not None:
            until = n_samples if vstream is None else min(n_samples, int((i + 1) / fps * sample_rate))
            while next_sample < until:
                n = min(block, until - next_sample)
                t = (next_sample + np.arange(n)) / sample_rate
                pcm = (0.3 * np.sin(2 * np.pi * tone_hz * t) * 32767).astype(np.int16)
                aframe = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
                aframe.sample_rate = sample_rate
                aframe.pts, aframe.time_base = next_sample, Fraction(1, sample_rate)
                for packet in astream.encode(aframe):
                    container.mux(packet)
                next_sample += n
    for stream in (vstream, astream):
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    container.close()
    return path
