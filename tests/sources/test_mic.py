"""Microphone: the callback -> asyncio bridge with a fake InputStream, and the real sounddevice path on a
headless PulseAudio virtual microphone (skipped cleanly when pulseaudio / PortAudio are missing)."""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.util
import logging
import sys
import threading
import time

import numpy as np
import pytest

from omnizip_stream.clock import MonotonicClock
from omnizip_stream.sources import SourceError, open_windows
from omnizip_stream.sources.base import StreamCounters
from omnizip_stream.sources.mic import MicSource
from omnizip_stream.sources.stream import WindowStream
from omnizip_stream.sources.synthetic import SyntheticParams, SyntheticSource
from omnizip_stream.windowing import Windower

from .conftest import MIC_AMPLITUDE, MIC_TONE_HZ, dominant_hz


class FakeInputStream:
    """Stands in for ``sounddevice.InputStream``: a thread calls ``callback`` with numbered blocks.

    ``script`` decides per opened stream: ``("flood", n)`` n blocks at once, ``("paced", n)`` n blocks in
    real time then silence (a stalled device), ``("fail",)`` the constructor raises.
    """

    def __init__(self, script, *, samplerate, blocksize, device, channels, dtype, callback):
        self.opened = script.pop(0) if script else ("paced", 10_000)
        if self.opened[0] == "fail":
            raise RuntimeError("device unavailable")
        assert channels == 1 and dtype == "float32"
        self.rate, self.block, self.callback = samplerate, blocksize, callback
        self.active = True
        self.closed = threading.Event()
        self.done = threading.Event()

    def start(self):
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        mode, n = self.opened
        t0 = time.monotonic()
        for k in range(n):
            if self.closed.is_set():
                break
            if mode == "paced":
                time.sleep(max(0.0, t0 + (k + 1) * self.block / self.rate - time.monotonic()))
            self.callback(np.full((self.block, 1), k, np.float32), self.block, None, None)
        self.done.set()

    def close(self, ignore_errors=True):
        self.closed.set()
        self.active = False


def fake_factory(script, made):
    def factory(**kw):
        stream = FakeInputStream(script, **kw)
        made.append(stream)
        return stream
    return factory


# ----------------------------------------------------------------------------- the bridge (no apt needed)
async def test_bridge_counts_drops_and_keeps_newest():
    made: list[FakeInputStream] = []
    counters = StreamCounters()
    mic = MicSource(stream_factory=fake_factory([("flood", 50)], made), queue_blocks=8, counters=counters)
    await mic.start()
    await asyncio.to_thread(made[0].done.wait, 5)
    await asyncio.sleep(0.05)
    got = [await mic.recv() for _ in range(8)]
    await mic.aclose()
    assert [int(c.samples[0]) for c in got] == list(range(42, 50))  # oldest blocks were dropped
    assert counters.audio_dropped_samples == 42 * 1600  # and every dropped sample is counted
    pts = np.array([c.pts_s for c in got])
    np.testing.assert_allclose(np.diff(pts), 0.1, atol=1e-9)  # sample-counted times stay contiguous
    assert all(c.samples.shape == (1600,) and c.samples.dtype == np.float32 for c in got)


async def test_bridge_reopens_a_stalled_mic_and_warns_once(caplog):
    made: list[FakeInputStream] = []
    counters = StreamCounters()
    mic = MicSource(stream_factory=fake_factory([("paced", 3), ("fail",), ("paced", 10_000)], made),
                    stall_timeout_s=0.3, backoff_s=0.05, counters=counters)
    with caplog.at_level(logging.WARNING):
        await mic.start()
        deadline = time.monotonic() + 10
        while counters.source_restarts < 1 and time.monotonic() < deadline:  # noqa: ASYNC110 (polls a counter)
            await asyncio.sleep(0.05)
        first = await mic.recv()
        await mic.aclose()
    assert counters.source_restarts == 1 and len(made) == 2  # the failed open raised before being recorded
    assert made[0].closed.is_set()
    assert first.pts_s == pytest.approx(0.0, abs=0.1)
    assert caplog.text.count("lost") == 1 and "is back" in caplog.text


async def test_lost_mic_gives_video_only_windows_then_audio_again():
    """Mic delivers 2 s, stalls, fails to reopen once, then comes back: windows keep flowing meanwhile."""
    made: list[FakeInputStream] = []
    clock = MonotonicClock()
    t0 = clock.now()
    counters = StreamCounters()
    common = {"clock": clock, "session_t0": t0, "counters": counters}
    video = SyntheticSource(SyntheticParams(audio=False, width=16, height=16), realtime=True, fps=2.0, **common)
    # 1.8 s of audio, then silence; the stall is noticed after 0.4 s; three failed reopens (0.3 + 0.6 + 1 s)
    mic = MicSource(stream_factory=fake_factory([("paced", 18)] + [("fail",)] * 3 + [("paced", 10_000)], made),
                    stall_timeout_s=0.4, backoff_s=0.3, backoff_max_s=1.0, **common)
    for s in (video, mic):
        await s.start()
    stream = WindowStream([video, mic], Windower(duration_s=6.0, counters=counters), live=True,
                          clock=clock, session_t0=t0, max_latency_s=0.3)
    stream.start()
    try:
        wins = [w async for w in stream]
    finally:
        await stream.aclose()
    assert [w.t0_s for w in wins] == [0.0, 2.0, 4.0]
    assert all(w.num_frames == 4 for w in wins)  # video never stopped
    assert wins[0].audio.shape == (32000,) and np.all(np.diff(wins[0].audio[:28000]) >= 0)  # blocks in order
    assert wins[0].audio.max() == 17
    assert wins[1].audio.shape == (0,) and wins[1].duration_s == 2.0  # video-only while the mic is lost
    assert wins[2].audio.shape == (32000,) and wins[2].audio[-1600:].max() > 0  # the microphone came back
    assert counters.source_restarts == 1


async def test_non_strict_mic_missing_at_start_is_retried(caplog):
    made: list[FakeInputStream] = []
    counters = StreamCounters()
    mic = MicSource(stream_factory=fake_factory([("fail",), ("paced", 10_000)], made), strict=False,
                    backoff_s=0.05, counters=counters)
    with caplog.at_level(logging.WARNING):
        await mic.start()  # does not raise: warns and keeps retrying
        chunk = await asyncio.wait_for(mic.recv(), 5)
        await mic.aclose()
    assert "unavailable" in caplog.text and counters.source_restarts == 1
    assert chunk.samples.shape == (1600,)
    strict = MicSource(stream_factory=fake_factory([("fail",)], []))
    with pytest.raises(SourceError, match="cannot open microphone .*device unavailable"):
        await strict.start()
    await strict.aclose()


def test_missing_portaudio_is_a_clear_error(monkeypatch):
    class NoPortAudio(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            return importlib.util.spec_from_loader(name, self) if name == "sounddevice" else None

        def create_module(self, spec):
            return None

        def exec_module(self, module):
            raise OSError("PortAudio library not found")

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoPortAudio(), *sys.meta_path])

    async def run():
        async with open_windows("mic"):
            pass

    with pytest.raises(SourceError) as info:
        asyncio.run(run())
    assert "libportaudio2" in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- real sounddevice
def _need_portaudio():
    try:
        import sounddevice  # noqa: F401
    except OSError as exc:
        pytest.skip(f"PortAudio library missing (apt-get install libportaudio2): {exc}")


async def test_unknown_mic_lists_devices():
    _need_portaudio()
    with pytest.raises(SourceError) as info:
        async with open_windows("mic", mic_device="no-such-microphone-xyz"):
            pass
    msg = str(info.value)
    assert "no-such-microphone-xyz" in msg and "not found" in msg and "microphones:" in msg and "\n" not in msg


async def test_pulse_virtual_mic_through_sounddevice(pulse_mic):
    from omnizip_stream.sources import list_devices

    names = [d.name for d in list_devices().microphones]
    assert "pulse" in names
    async with open_windows("mic", mic_device="pulse", duration_s=2.0) as windows:
        wins = [w async for w in windows]
        counters = windows.counters.snapshot()
    assert [w.t0_s for w in wins] == [0.0]
    w = wins[0]
    assert w.audio.shape == (32000,) and w.num_frames == 0
    tail = w.audio[8000:]  # the window may start with a few ms of zeros before the first block
    assert abs(dominant_hz(tail) - MIC_TONE_HZ) < 5
    rms = float(np.sqrt(np.mean(tail**2)))
    assert abs(rms - MIC_AMPLITUDE / np.sqrt(2)) < 0.03
    assert counters["audio_dropped_samples"] == 0


@pytest.mark.timeout(60)
async def test_pulse_server_killed_and_restarted(pulse_mic):
    """The real path: the sound server dies mid-stream (video-only windows), then comes back (audio again)."""
    clock = MonotonicClock()
    t0 = clock.now()
    counters = StreamCounters()
    common = {"clock": clock, "session_t0": t0, "counters": counters}
    video = SyntheticSource(SyntheticParams(audio=False, width=16, height=16), realtime=True, fps=2.0, **common)
    mic = MicSource("pulse", stall_timeout_s=0.5, backoff_s=0.2, backoff_max_s=0.5, **common)
    for s in (video, mic):
        await s.start()
    stream = WindowStream([video, mic], Windower(duration_s=8.0, counters=counters), live=True,
                          clock=clock, session_t0=t0, max_latency_s=0.5)
    stream.start()
    wins = []
    try:
        async for w in stream:
            wins.append(w)
            if w.t0_s == 0.0:
                await asyncio.to_thread(pulse_mic.stop)  # the server dies during window [2, 4)
            if w.t0_s == 4.0:
                await asyncio.to_thread(pulse_mic.start)  # and is back during window [6, 8)
    finally:
        await stream.aclose()
    assert [w.t0_s for w in wins] == [0.0, 2.0, 4.0, 6.0]
    assert all(w.num_frames == 4 for w in wins)  # video never stopped
    assert wins[0].audio.shape == (32000,) and abs(dominant_hz(wins[0].audio[8000:]) - MIC_TONE_HZ) < 5
    assert wins[2].audio.shape == (0,) and wins[2].duration_s == 2.0  # video-only while the mic is gone
    assert wins[3].audio.shape == (32000,) and abs(dominant_hz(wins[3].audio[-8000:]) - MIC_TONE_HZ) < 5
    assert counters.source_restarts >= 1
