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
