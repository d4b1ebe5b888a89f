"""Fixtures of the evaluation tests: small generated clips, a small-pixel tiny adapter, dataset writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PIXELS = 56 * 56


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    """Two good clips (A/V and audio-only), a corrupt file and a missing path, generated with PyAV."""
    pytest.importorskip("av")
    from omni_helpers import make_media

    d = tmp_path_factory.mktemp("eval_media")
    out = {
        "av": str(make_media(d / "av.mp4", seconds=2.0, rate=4, width=64, height=48, layout="mono")),
        "audio": str(make_media(d / "tone.wav", seconds=2.0, video=False, tone_hz=880.0, layout="mono")),
    }
    (d / "corrupt.mp4").write_bytes(b"not a video at all\n" * 50)
    out["corrupt"] = str(d / "corrupt.mp4")
    out["missing"] = str(d / "missing.mp4")
    out["dir"] = str(d)
    return out


@pytest.fixture(scope="session")
def eval_adapter(tiny25):
    """The tiny random Qwen2.5-Omni thinker with a small pixel budget (fast on CPU)."""
    from omni_helpers import make_adapter

    return make_adapter(tiny25, video_max_pixels=PIXELS)


def write_jsonl(path: Path, rows: list) -> Path:
    """Write ``rows`` (dicts, or raw strings written as they are) one per line."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def dataset_rows(clips) -> list[dict]:
    """Four questions: two answerable clips, one corrupt file, one missing file."""
    return [
        {"id": "q1", "video": clips["av"], "question": "What moves?", "options": ["a square", "a circle"],
         "answer": "A", "task": "visual"},
        {"id": "q2", "video": clips["audio"], "question": "What is heard?",
         "options": ["A. a tone", "B. speech", "C. music"], "answer": "a tone", "task": "audio"},
        {"id": "q3", "video": clips["corrupt"], "question": "Broken?", "options": ["yes", "no"], "answer": "b"},
        {"id": "q4", "video": clips["missing"], "question": "Missing?", "options": ["yes", "no"], "answer": "(B)"},
    ]
