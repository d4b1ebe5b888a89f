"""The browser tests' artifacts folder (the fake devices are :mod:`omnizip_stream.web.chromium`)."""

from __future__ import annotations

import os
from pathlib import Path

from omnizip_stream.web.chromium import chromium_args, chromium_path, make_fake_camera, make_fake_microphone

REPO = Path(__file__).resolve().parents[2]

__all__ = ["artifacts_dir", "chromium_args", "chromium_path", "make_fake_camera", "make_fake_microphone"]


def artifacts_dir() -> Path:
    """Where browser tests leave screenshots: ``$OMNIZIP_TEST_ARTIFACTS`` or ``<repo>/tmp/artifacts``."""
    path = Path(os.environ.get("OMNIZIP_TEST_ARTIFACTS", REPO / "tmp" / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
