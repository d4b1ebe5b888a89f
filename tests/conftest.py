"""Test-wide guards: hermetic (no hub, no non-loopback network), seeded, few threads."""

from __future__ import annotations

import ipaddress
import os
import random
import socket

import pytest

try:  # no per-example deadlines: the machines are shared and noisy (speed lives in scripts/ benchmarks)
    from hypothesis import HealthCheck, settings

    settings.register_profile("omnizip", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("omnizip")
except ImportError:  # pragma: no cover
    pass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address: object) -> bool:
    if isinstance(address, tuple) and address:
        host = address[0]
        if host in ("localhost", ""):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False
    return True  # AF_UNIX paths and the like


def _guarded_connect(self: socket.socket, address: object) -> None:
    if not _is_local(address):
        raise OSError(f"tests must not reach the network (tried {address!r})")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if not _is_local(address):
        raise OSError(f"tests must not reach the network (tried {address!r})")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    try:
        import numpy as np

        np.random.seed(0)
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover
        pass


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:  # pragma: no cover
        pass


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


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory):
    """A session temp dir with small generated media files (see :func:`write_media`)."""
    d = tmp_path_factory.mktemp("media")
    files = {
        "av": write_media(d / "av.mp4", seconds=4.0),
        "video_only": write_media(d / "video_only.mp4", seconds=4.0, audio=False),
        "audio_only": write_media(d / "audio_only.wav", seconds=3.0, video=False),
    }
    with open(d / "not_media.mp4", "wb") as fh:
        fh.write(b"this is not a video file\n" * 40)
    data = open(files["av"], "rb").read()
    with open(d / "truncated.mp4", "wb") as fh:
        fh.write(data[: len(data) // 3])
    files["not_media"] = str(d / "not_media.mp4")
    files["truncated"] = str(d / "truncated.mp4")
    files["missing"] = str(d / "does_not_exist.mp4")
    return files


@pytest.fixture(scope="session")
def tiny25():
    """Tiny random Qwen2.5-Omni thinker + offline tokenizer (session-wide, never mutated)."""
    from omnizip.testing import tiny_qwen2_5_omni

    return tiny_qwen2_5_omni(seed=0)


@pytest.fixture(scope="session")
def tiny3():
    """Tiny random Qwen3-Omni thinker + offline tokenizer."""
    from omnizip.testing import tiny_qwen3_omni

    return tiny_qwen3_omni(seed=0)


@pytest.fixture(scope="session")
def adapter25(tiny25):
    from omni_helpers import make_adapter

    return make_adapter(tiny25)


@pytest.fixture(scope="session")
def adapter3(tiny3):
    from omni_helpers import make_adapter

    return make_adapter(tiny3)
