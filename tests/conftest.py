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


from omni_helpers import make_media  # noqa: E402  (tests/ is on sys.path via this conftest)


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
    import tempfile

    # Standing questions' alert logs go to a throwaway folder, not the user's ~/.local/state (subprocesses inherit).
    os.environ.setdefault("OMNIZIP_ALERTS_DIR", tempfile.mkdtemp(prefix="omnizip-test-alerts-"))
    try:
        import torch

        # One thread: the tiny models' ops are too small to gain from a second, and on a 2-core machine a second
        # thread fights every other process (tiny-model tests ran ~6x slower with two under load).
        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory):
    """A session temp dir with small generated media files (see :func:`omni_helpers.make_media`)."""
    d = tmp_path_factory.mktemp("media")
    files = {
        "av": str(make_media(d / "av.mp4", seconds=4.0, rate=10, layout="mono")),
        "video_only": str(make_media(d / "video_only.mp4", seconds=4.0, rate=10, audio=False)),
        "audio_only": str(make_media(d / "audio_only.wav", seconds=3.0, video=False, layout="mono")),
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
