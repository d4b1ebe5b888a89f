"""Fixtures for the adapter tests: tiny random thinkers and synthetic clips (no download)."""

from __future__ import annotations

import numpy as np
import pytest

from omnizip.adapters.loading import _wrap
from omnizip.testing import tiny_qwen2_5_omni, tiny_qwen3_omni



@pytest.fixture(scope="session")
def tiny25():
    return tiny_qwen2_5_omni(seed=0)


@pytest.fixture(scope="session")
def tiny3():
    return tiny_qwen3_omni(seed=0)


def make_adapter(bundle, **kwargs):
    """Adapter around a tiny bundle with the family's default pixel budget (as ``reference_inputs``)."""
    kwargs.setdefault("system_prompt", "")  # the template's own default system prompt, as the reference
    return _wrap(bundle.family, bundle.thinker, bundle.tokenizer, {"model_name": "tiny", **kwargs})


@pytest.fixture(scope="session")
def adapter25(tiny25):
    return make_adapter(tiny25)


@pytest.fixture(scope="session")
def adapter3(tiny3):
    return make_adapter(tiny3)


def synthetic_clip(seconds: float, *, seed: int = 0, size: tuple[int, int] = (112, 112), fps: float = 2.0,
                   audio: bool = True, video: bool = True):
    """Noise audio (16 kHz) and moving-gradient frames at ``fps``: deterministic per seed."""
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
