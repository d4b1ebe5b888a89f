"""Fixtures for the source tests: media generated with PyAV, a headless PulseAudio microphone, a TCP camera."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from omni_helpers import TONE_HZ, make_media  # noqa: E402,F401  (shared with the other test folders)

HERE = Path(__file__).parent


def unknown_codec_wav(path: Path) -> Path:
    """A well-formed WAV whose format tag (0x3333) no FFmpeg decoder handles."""
    data = bytes(16000)
    fmt = struct.pack("<HHIIHH", 0x3333, 1, 16000, 32000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


@dataclass(frozen=True)
class Media:
    av_mp4: Path          # 2 s 160x120@30 h264 + 48 kHz stereo aac
    av_long_mp4: Path     # 4.5 s, same
    video_only: Path      # 2 s h264, no audio
    wav_mono_44k: Path    # 2 s pcm 44.1 kHz mono
    m4a_stereo_44k: Path  # 2 s aac 44.1 kHz stereo
    mkv_mono_48k: Path    # 2 s h264 + aac 48 kHz mono in Matroska
    truncated_mp4: Path   # first half of av_mp4 (moov atom missing)
    truncated_faststart: Path  # faststart mp4 cut in half (header intact, media missing)
    truncated_ts: Path    # MPEG-TS cut mid-stream with garbage after
    not_media: Path       # text
    empty: Path           # 0 bytes
    unknown_codec: Path   # WAV with an undecodable codec
    no_streams: Path      # ffmetadata file: a valid container with no streams


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    d = tmp_path_factory.mktemp("media")
    av_mp4 = make_media(d / "av.mp4")
    fs = make_media(d / "fs.mp4", container_options={"movflags": "faststart"})
    ts = make_media(d / "av.ts", fmt="mpegts")
    truncated_mp4 = d / "truncated.mp4"
    truncated_mp4.write_bytes(av_mp4.read_bytes()[: av_mp4.stat().st_size // 2])
    truncated_fs = d / "truncated_faststart.mp4"
    truncated_fs.write_bytes(fs.read_bytes()[: fs.stat().st_size // 2])
    raw = ts.read_bytes()
    truncated_ts = d / "truncated.ts"
    truncated_ts.write_bytes(raw[: len(raw) // 2] + b"\x47" + bytes(500))
    not_media = d / "notes.mp4"
    not_media.write_text("these are not the frames you are looking for\n" * 50)
    empty = d / "empty.mp4"
    empty.write_bytes(b"")
    no_streams = d / "meta.ffmeta"
    no_streams.write_text(";FFMETADATA1\ntitle=nothing here\n")
    return Media(
        av_mp4=av_mp4,
        av_long_mp4=make_media(d / "av_long.mp4", seconds=4.5),
        video_only=make_media(d / "video_only.mp4", audio=False),
        wav_mono_44k=make_media(d / "mono44k.wav", video=False, audio_rate=44100, layout="mono"),
        m4a_stereo_44k=make_media(d / "stereo44k.m4a", video=False, audio_rate=44100, layout="stereo"),
        mkv_mono_48k=make_media(d / "mono48k.mkv", audio_rate=48000, layout="mono"),
        truncated_mp4=truncated_mp4,
        truncated_faststart=truncated_fs,
        truncated_ts=truncated_ts,
        not_media=not_media,
        empty=empty,
        unknown_codec=unknown_codec_wav(d / "unknown_codec.wav"),
        no_streams=no_streams,
    )


def dominant_hz(x: np.ndarray, rate_hz: int = 16000) -> float:
    """Frequency of the largest FFT bin of ``x``."""
    spec = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return float(np.argmax(spec) * rate_hz / x.shape[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------ TCP MPEG-TS "IP camera"
@pytest.fixture
def ts_server():
    """Start ``ts_server.py PORT SECONDS SESSIONS PAUSE GOP JOIN_S`` as a child process; returns the port.

    With ``wait=True`` it returns once the server is about to listen (plus a margin), for clients that
    do not retry the first connection.
    """
    procs: list[subprocess.Popen[bytes]] = []

    def start(seconds: float, sessions: int = 1, pause_s: float = 0.0, wait: bool = False, gop: int = 15,
              join_s: float = 0.0) -> int:
        port = free_port()
        p = subprocess.Popen([sys.executable, str(HERE / "ts_server.py"), str(port), str(seconds), str(sessions),
                              str(pause_s), str(gop), str(join_s)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        procs.append(p)
        if wait:
            assert p.stdout is not None and p.stdout.readline().strip() == b"listening"
            time.sleep(0.3)
        return port

    yield start
    for p in procs:
        p.kill()
        p.wait(5)


# ------------------------------------------------------------------------ headless PulseAudio mic
MIC_TONE_HZ = 1000.0
MIC_AMPLITUDE = 0.3


def _portaudio_problem() -> str | None:
    try:
        import sounddevice  # noqa: F401
    except OSError as exc:
        return f"PortAudio library missing (apt-get install libportaudio2): {exc}"
    except ImportError as exc:
        return f"sounddevice not installed: {exc}"
    return None


class PulseMic:
    """A headless PulseAudio server whose ``virt_mic`` source plays a 1 kHz tone written in real time."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.rt = tmp / "rt"
        self.rt.mkdir(mode=0o700)
        self.fifo = tmp / "mic.fifo"
        self.script = tmp / "test.pa"
        self.script.write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.rt}/native\n"
            f"load-module module-pipe-source source_name=virt_mic file={self.fifo} format=s16le rate=16000 channels=1\n"
            "set-default-source virt_mic\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self.server = f"unix:{self.rt}/native"

    def start(self) -> None:
        for stale in (self.rt / "native", self.fifo):
            if stale.exists() or stale.is_socket():
                stale.unlink()
        env = dict(os.environ, HOME=str(self.tmp), XDG_RUNTIME_DIR=str(self.rt), PULSE_RUNTIME_PATH=str(self.rt))
        log = open(self.tmp / "pulse.log", "ab")
        self.proc = subprocess.Popen(
            [shutil.which("pulseaudio") or "pulseaudio", "-n", "-F", str(self.script), "--daemonize=no",
             "--exit-idle-time=-1", "--use-pid-file=no"], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while not ((self.rt / "native").exists() and self.fifo.exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pulseaudio did not start: {(self.tmp / 'pulse.log').read_text()[-500:]}")
            time.sleep(0.02)
        self._stop.clear()
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._writer.start()

    def _write(self) -> None:
        """Feed the FIFO with the tone in 100 ms blocks, paced by the clock (a mic never runs ahead)."""
        try:
            fd = os.open(self.fifo, os.O_WRONLY)
        except OSError:
            return
        t0, k = time.monotonic(), 0
        try:
            while not self._stop.is_set():
                idx = np.arange(k * 1600, (k + 1) * 1600)
                x = MIC_AMPLITUDE * np.sin(2 * np.pi * MIC_TONE_HZ * idx / 16000)
                os.write(fd, (x * 32767).astype("<i2").tobytes())
                k += 1
                time.sleep(max(0.0, t0 + k * 0.1 - time.monotonic()))
        except OSError:
            pass  # the server went away
        finally:
            os.close(fd)

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._writer is not None:
            self._writer.join(2)


@pytest.fixture
def pulse_mic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A running virtual microphone reachable as PortAudio device ``pulse``; skips when unavailable."""
    if shutil.which("pulseaudio") is None:
        pytest.skip("pulseaudio is not installed (apt-get install pulseaudio libasound2-plugins)")
    problem = _portaudio_problem()
    if problem:
        pytest.skip(problem)
    if not list(Path("/usr/lib").glob("*/alsa-lib/libasound_module_pcm_pulse.so")):
        pytest.skip("ALSA's pulse plugin is missing (apt-get install libasound2-plugins)")
    mic = PulseMic(tmp_path)
    mic.start()
    monkeypatch.setenv("PULSE_SERVER", mic.server)
    monkeypatch.setenv("PULSE_SOURCE", "virt_mic")
    yield mic
    mic.stop()
