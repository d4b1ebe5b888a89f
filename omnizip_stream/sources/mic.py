"""Microphone capture: a sounddevice ``InputStream`` bridged into asyncio.

The PortAudio callback copies each block (averaged to mono, resampled to 16 kHz when the device cannot
record at 16 kHz), stamps it in session time by counting samples from the first block, and hands it to
a bounded buffer that never blocks the callback (when the loop has not read for a whole buffer, the
oldest block is lost: counted and logged, never silent). A supervisor task notices a lost microphone (stream stopped, or no callback for
``stall_timeout_s``), warns once, and reopens it with exponential backoff; the windower meanwhile
produces video-only windows. sounddevice is imported lazily: without PortAudio it raises ``OSError``,
which becomes a one-line :class:`SourceError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from omnizip_stream.clock import Clock, MonotonicClock
from omnizip_stream.sources._buffer import FrameBuffer
from omnizip_stream.sources.base import SAMPLE_RATE_HZ, AudioChunk, SourceError, StreamCounters, one_line
from omnizip_stream.sources.devices import import_sounddevice, list_devices

logger = logging.getLogger(__name__)

_REANCHOR_S = 1.0  # sample-counted time this far behind the clock means samples were lost: re-anchor
_pa_lock = threading.Lock()
_open_streams = 0


def portaudio(refresh: bool = False) -> Any:
    """Return the sounddevice module; with ``refresh`` PortAudio re-scans devices (only when no stream is open)."""
    sd: Any = import_sounddevice()
    if refresh:
        with _pa_lock:
            if _open_streams == 0:
                try:
                    sd._terminate()
                    sd._initialize()
                except Exception as exc:  # a failed rescan keeps the old device list
                    logger.debug("PortAudio rescan failed: %s", exc)
    return sd


def _stream_opened(delta: int) -> None:
    global _open_streams
    with _pa_lock:
        _open_streams += delta


StreamFactory = Callable[..., Any]


class MicSource:
    """A microphone as a live audio source.

    Args:
        device: PortAudio device index or (part of a) name; the default input when None.
        block_s: callback block length, seconds.
        queue_blocks: buffer capacity in blocks.
        strict: a microphone that cannot be opened at start raises :class:`SourceError` (listing the
            microphones); with False it is treated as lost: warn once and keep retrying.
        stall_timeout_s: no callback for this long means the microphone is lost.
        backoff_s / backoff_max_s: reopen delays.
        stream_factory: ``InputStream``-compatible constructor (tests inject a fake one); when given,
            ``device`` is passed through without looking it up.
        clock / session_t0 / counters: shared session objects.
    """

    def __init__(
        self,
        device: str | int | None = None,
        *,
        block_s: float = 0.1,
        queue_blocks: int = 50,
        strict: bool = True,
        stall_timeout_s: float = 2.0,
        backoff_s: float = 1.0,
        backoff_max_s: float = 10.0,
        stream_factory: StreamFactory | None = None,
        clock: Clock | None = None,
        session_t0: float | None = None,
        counters: StreamCounters | None = None,
    ) -> None:
        if isinstance(device, str) and device.strip().isdigit():
            device = int(device)
        self.device = device
        self.name = f"microphone {device!r}" if device is not None else "microphone (default)"
        self.kinds = frozenset({"audio"})
        self.block_s = block_s
        self.strict = strict
        self.stall_timeout_s = stall_timeout_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.stream_factory = stream_factory
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.session_t0 = self.clock.now() if session_t0 is None else session_t0
        self.counters = counters if counters is not None else StreamCounters()
        self._buffer = FrameBuffer(queue_blocks, counters=self.counters, name=self.name)
        self._stream: Any = None
        self._rate = SAMPLE_RATE_HZ
        self._resampler: Any = None
        self._anchor_s: float | None = None
        self._count = 0
        self._last_end_s = 0.0
        self._last_callback = 0.0
        self._generation = 0
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def kind(self) -> str:
        """Always ``"audio"``."""
        return "audio"

    def session_time(self) -> float:
        """Seconds since session time 0."""
        return self.clock.now() - self.session_t0

    # ---------------------------------------------------------------- open / close (worker threads)
    def _resolve(self) -> tuple[StreamFactory, Any, int]:
        """Return ``(factory, device, samplerate)``; raise SourceError listing the microphones."""
        if self.stream_factory is not None:
            return self.stream_factory, self.device, SAMPLE_RATE_HZ
        sd = portaudio(refresh=True)
        try:
            info = sd.query_devices(self.device, "input")
        except (ValueError, sd.PortAudioError) as exc:
            what = f"microphone {self.device!r} not found" if self.device is not None else "no default microphone"
            raise SourceError(f"{what} ({one_line(exc)}); {list_devices().describe_microphones()}") from exc
        rate = SAMPLE_RATE_HZ
        try:
            sd.check_input_settings(device=self.device, samplerate=SAMPLE_RATE_HZ, channels=1, dtype="float32")
        except Exception:
            rate = int(info["default_samplerate"])
        return sd.InputStream, self.device, rate

    def _open_stream(self) -> None:
        factory, device, rate = self._resolve()
        self._generation += 1
        generation = self._generation
        self._rate, self._anchor_s, self._count = rate, None, 0
        self._resampler = None
        if rate != SAMPLE_RATE_HZ:
            from omnizip_stream.sources._avopen import import_av

            self._resampler = import_av().AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE_HZ)

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            if generation == self._generation:
                self._on_block(indata, frames, status)

        try:
            stream = factory(samplerate=rate, blocksize=max(1, round(self.block_s * rate)), device=device,
                             channels=1, dtype="float32", callback=callback)
            stream.start()
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"cannot open {self.name}: {one_line(exc)}; "
                              f"{list_devices().describe_microphones()}") from exc
        _stream_opened(+1)
        self._last_callback = self.clock.now()
        self._stream = stream

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        self._generation += 1
        if stream is None:
            return

        def close() -> None:
            try:
                stream.close(ignore_errors=True)
            except TypeError:
                stream.close()
            except Exception as exc:
                logger.debug("%s: close failed: %s", self.name, exc)

        # Closing a PortAudio stream that gets no data can hang; never let that block shutdown.
        closer = threading.Thread(target=close, name="mic-close", daemon=True)
        closer.start()
        closer.join(2.0)
        if closer.is_alive():
            logger.warning("%s: the audio stream did not close within 2 s; abandoning it", self.name)
        else:
            _stream_opened(-1)

    # ---------------------------------------------------------------- the PortAudio callback thread
    def _on_block(self, indata: np.ndarray, frames: int, status: Any) -> None:
        self._last_callback = self.clock.now()
        if status:
            logger.debug("%s: %s", self.name, status)
        x = np.asarray(indata, dtype=np.float32)
        mono = x[:, 0].copy() if x.ndim == 2 and x.shape[1] == 1 else x.reshape(x.shape[0], -1).mean(axis=1)
        if self._resampler is not None:
            mono = self._resample(mono)
            if mono.shape[0] == 0:
                return
        start_est = self.session_time() - frames / self._rate
        if self._anchor_s is None:
            self._anchor_s, self._count = max(start_est, self._last_end_s), 0
        pts = self._anchor_s + self._count / SAMPLE_RATE_HZ
        if start_est - pts > _REANCHOR_S:  # samples were lost (overflow, stall): jump to the clock
            self._anchor_s, self._count, pts = start_est, 0, start_est
        self._count += mono.shape[0]
        chunk = AudioChunk(pts, mono)
        self._last_end_s = chunk.end_s
        self._buffer.put_nowait(chunk)

    def _resample(self, mono: np.ndarray) -> np.ndarray:
        from omnizip_stream.sources._avopen import import_av

        av = import_av()
        frame = av.AudioFrame.from_ndarray(mono[None, :], format="flt", layout="mono")
        frame.sample_rate = self._rate
        outs = [o.to_ndarray().reshape(-1) for o in self._resampler.resample(frame)]
        return np.concatenate(outs).astype(np.float32) if outs else np.zeros(0, np.float32)

    # ---------------------------------------------------------------- asyncio side
    async def start(self) -> None:
        """Open the microphone (raises :class:`SourceError` if ``strict``) and start supervising it."""
        self._buffer.bind(asyncio.get_running_loop())
        try:
            await asyncio.to_thread(self._open_stream)
        except SourceError as exc:
            if self.strict:
                raise
            logger.warning("%s unavailable (%s); video-only windows until it appears, retrying", self.name,
                           exc.message)
        self._supervisor = asyncio.create_task(self._supervise(warned=self._stream is None), name="mic-supervisor")

    async def recv(self) -> AudioChunk:
        """Next 16 kHz mono block in session time."""
        item = await self._buffer.get()
        assert isinstance(item, AudioChunk)
        return item

    def _lost(self) -> bool:
        stream = self._stream
        if stream is None:
            return True
        if not getattr(stream, "active", True):
            return True
        return self.clock.now() - self._last_callback > self.stall_timeout_s

    async def _supervise(self, warned: bool) -> None:
        delay = self.backoff_s
        while not self._closed:
            await self.clock.asleep(min(0.25, self.stall_timeout_s / 4))
            if not self._lost():
                continue
            if self._stream is not None:
                if not warned:
                    logger.warning("%s lost; video-only windows until it is back, retrying", self.name)
                    warned = True
                await asyncio.to_thread(self._close_stream)
            try:
                await asyncio.to_thread(self._open_stream)
            except SourceError as exc:
                logger.debug("%s: reopen failed: %s", self.name, exc.message)
                await self.clock.asleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            logger.warning("%s is back", self.name)
            self.counters.add(source_restarts=1)
            delay, warned = self.backoff_s, False

    async def aclose(self) -> None:
        """Stop supervising, close the stream (bounded wait) and drop buffered blocks."""
        if self._closed:
            return
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await asyncio.to_thread(self._close_stream)
        self._buffer.close()
