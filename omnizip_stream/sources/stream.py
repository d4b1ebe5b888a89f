"""The async driver: pull sources into a :class:`~omnizip_stream.windowing.Windower`, queue the windows.

One reader task per source feeds the windower; for live media a ticker forces windows out at the
deadline (``max_latency_s`` after their end) so a lost camera or microphone never stalls the stream.
Finished windows wait in a bounded queue for the consumer: bounded buffering, never a drop. When the
queue is full the readers wait (which stops the decoders, or makes a paced source wait for room), and
the ticker forces nothing out meanwhile (a slow consumer is not a lost device). The consumer of live
windows, :meth:`StreamSession.push_window <omnizip_stream.session.StreamSession.push_window>`, never
makes a live source wait while the model is behind real time: it sheds video by the one drop policy
(:mod:`omnizip_stream.server.scheduler`) and counts it in the stream's counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence

from omnizip_stream.clock import Clock, MonotonicClock
from omnizip_stream.sources.base import MediaError, Source, SourceEnded, SourceError, StreamCounters
from omnizip_stream.window import Window
from omnizip_stream.windowing import Windower

logger = logging.getLogger(__name__)

class WindowStream:
    """An async iterator of :class:`Window` fed by started sources.

    Args:
        sources: started sources (``kinds`` known).
        windower: the windowing core (its ``counters`` are shared with the sources).
        live: live media (enables the deadline ticker).
        clock: the session clock; ``session_t0`` is session time 0 on it.
        max_latency_s: how long after its end a live window waits for late media.
        max_queue_windows: windows queued for the consumer before the readers wait.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        windower: Windower,
        *,
        live: bool,
        clock: Clock | None = None,
        session_t0: float = 0.0,
        max_latency_s: float = 0.75,
        max_queue_windows: int = 4,
    ) -> None:
        if max_queue_windows < 1:
            raise ValueError(f"max_queue_windows must be >= 1, got {max_queue_windows}")
        self.sources = list(sources)
        self.windower = windower
        self.counters: StreamCounters = windower.counters
        self.live = live
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.session_t0 = session_t0
        self.max_latency_s = max_latency_s
        self.max_queue_windows = max_queue_windows
        self._pending: deque[Window] = deque()
        self._changed = asyncio.Event()
        self._space = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ended_sources = 0
        self._error: BaseException | None = None
        self._finished = False
        self._closed = False
        self._sources_stopped: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the reader tasks (and the deadline ticker for live media)."""
        for src in self.sources:
            self._tasks.append(asyncio.create_task(self._read(src), name=f"read:{src.name}"))
        if self.live:
            self._tasks.append(asyncio.create_task(self._tick(), name="window-deadline"))

    async def aclose(self) -> None:
        """Stop reading and close every source (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._finished = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._sources_stopped is not None:
            await asyncio.gather(self._sources_stopped, return_exceptions=True)
        await self._close_sources()
        self._changed.set()
        self._space.set()

    async def _close_sources(self) -> None:
        for src in self.sources:
            try:
                await src.aclose()
            except Exception:  # closing must not mask the real outcome
                logger.exception("%s: error while closing", src.name)

    def session_time(self) -> float:
        """Seconds since session time 0."""
        return self.clock.now() - self.session_t0

    @property
    def queued(self) -> int:
        """Windows waiting for the consumer."""
        return len(self._pending)

    # ------------------------------------------------------------------ iteration
    def __aiter__(self) -> WindowStream:
        return self

    async def __anext__(self) -> Window:
        while True:
            if self._pending:
                w = self._pending.popleft()
                self._space.set()
                self.counters.add(windows_out=1, video_frames_out=w.num_frames,
                                  audio_samples_out=w.audio.shape[0])
                return w
            if self._error is not None:
                raise self._error
            if self._finished:
                raise StopAsyncIteration
            self._changed.clear()
            await self._changed.wait()

    # ------------------------------------------------------------------ producers
    async def _read(self, src: Source) -> None:
        try:
            while not self._closed and self._error is None:
                # After the last window (the duration reached) items are still taken, and ignored by the
                # windower, until the source stops: a full buffer would count them as drops.
                item = await src.recv()
                await self._put(self.windower.add(item))
        except SourceEnded:
            self._ended_sources += 1
            stopped_early = self.windower.done  # the duration was reached; the sources were stopped
            await self._put(self.windower.end(src.kinds))
            if not stopped_early and self._ended_sources == len(self.sources) and self.windower.windows_emitted == 0:
                self._fail(self._too_short())
        except SourceError as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("%s: reader failed", src.name)
            self._fail(SourceError(f"{src.name}: unexpected error: {exc}"))

    def _too_short(self) -> MediaError:
        """The error for media that ended before giving a single window (a 0.1-s clip)."""
        w = self.windower
        names = ", ".join(src.name for src in self.sources)
        return MediaError(f"{names}: too short for one window: {w.media_end_s:.2f} s of media (a window is "
                          f"{w.window_s:g} s and needs at least {w.min_tail_s:g} s of media); nothing to answer from")

    async def _tick(self) -> None:
        period = min(0.1, self.windower.window_s / 4)
        while not self._finished:
            await self.clock.asleep(period)
            if len(self._pending) < self.max_queue_windows:  # a full queue is a slow consumer, not a lost device
                await self._put(self.windower.close_until(self.session_time() - self.max_latency_s))

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._finished = True
        self._changed.set()
        self._space.set()

    async def _put(self, windows: list[Window]) -> None:
        for w in windows:
            while len(self._pending) >= self.max_queue_windows and not self._closed:
                self._space.clear()
                await self._space.wait()
            self._pending.append(w)
            self._changed.set()
        if self.windower.done:
            self._finished = True
            if self._sources_stopped is None:
                # The requested duration is reached: stop producing now, so nothing beyond it is decoded,
                # paced or dropped (counted) while the consumer finishes.
                self._sources_stopped = asyncio.ensure_future(self._close_sources())
        self._changed.set()
