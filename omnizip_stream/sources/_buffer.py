"""Thread -> asyncio hand-off: a bounded frame buffer, and a threaded source base.

Decoders and device callbacks run off the event loop; they hand items to the loop through a
:class:`FrameBuffer`. It is bounded buffering, not a drop policy: a producer thread that can wait
(a decoder, a camera or URL reader, a paced synthetic source) waits for room. Only a producer that
must never block (the PortAudio callback) uses :meth:`FrameBuffer.put_nowait`, which, when the loop
has not read for a whole buffer, loses the oldest item: counted and logged, never silent. Shedding
video when the model falls behind real time is the session's policy
(:mod:`omnizip_stream.server.scheduler`), the only one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque

from omnizip_stream.clock import Clock, MonotonicClock
from omnizip_stream.sources.base import (
    AudioChunk,
    SourceEnded,
    SourceError,
    StreamCounters,
    VideoFrame,
    one_line,
)

logger = logging.getLogger(__name__)

Item = AudioChunk | VideoFrame


class FrameBuffer:
    """A bounded, thread-safe queue whose consumer awaits on the event loop.

    Args:
        maxsize: capacity in items (>= 1).
        counters: where what :meth:`put_nowait` loses is counted.
        name: source name for log messages.
    """

    def __init__(self, maxsize: int, *, counters: StreamCounters, name: str = "source") -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.counters = counters
        self.name = name
        self._items: deque[Item] = deque()
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._end: BaseException | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._overflow_warned = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the event loop the consumer runs on (call from the loop before producing)."""
        self._loop = loop

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    # ----------------------------------------------------------------- producer side (any thread)
    def put(self, item: Item, stop: threading.Event | None = None) -> bool:
        """Add ``item``, waiting for room; returns False (item discarded) once closed or ``stop`` is set."""
        with self._lock:
            while len(self._items) >= self.maxsize and not self._closed:
                if stop is not None and stop.is_set():
                    return False
                self._not_full.wait(0.1)
            if self._closed:
                return False
            self._items.append(item)
            self._wake_locked()
            return True

    def put_nowait(self, item: Item) -> bool:
        """Add ``item`` without ever blocking (a device callback); returns False once closed.

        When full (the loop has not read for a whole buffer), the oldest item is lost: counted in
        ``audio_dropped_samples`` / ``video_dropped`` and logged once.
        """
        with self._lock:
            if self._closed:
                return False
            if len(self._items) >= self.maxsize:
                self._lose_oldest_locked()
            self._items.append(item)
            self._wake_locked()
            return True

    def finish(self, end: BaseException | None = None) -> None:
        """Mark the end of the media: the consumer gets ``end`` (default :class:`SourceEnded`) after the items."""
        with self._lock:
            if self._end is None:
                self._end = end if end is not None else SourceEnded(self.name)
            self._wake_locked()

    def close(self) -> None:
        """Discard everything and wake every waiter (used on shutdown)."""
        with self._lock:
            self._closed = True
            self._items.clear()
            if self._end is None:
                self._end = SourceEnded(self.name)
            self._not_full.notify_all()
            self._wake_locked()

    def _lose_oldest_locked(self) -> None:
        old = self._items.popleft()
        if isinstance(old, AudioChunk):
            self.counters.add(audio_dropped_samples=old.samples.shape[0])
        else:
            self.counters.add(video_dropped=1)
        if not self._overflow_warned:
            self._overflow_warned = True
            logger.warning("%s: the event loop is not reading the device; its oldest blocks are lost (counted)",
                           self.name)

    def _wake_locked(self) -> None:
        fut, self._waiter = self._waiter, None
        if fut is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # loop closed during shutdown
                pass

    # ----------------------------------------------------------------- consumer side (the loop)
    async def get(self) -> Item:
        """Return the next item; raise :class:`SourceEnded` / :class:`SourceError` after the last one."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._items:
                    item = self._items.popleft()
                    self._not_full.notify()
                    return item
                if self._end is not None:
                    raise self._end
                fut: asyncio.Future[None] = loop.create_future()
                self._waiter = fut
            try:
                await fut
            finally:
                with self._lock:
                    if self._waiter is fut:
                        self._waiter = None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ThreadedSource:
    """Base for sources whose blocking producer (a decoder, a capture loop) runs in a worker thread.

    Subclasses implement ``_open()`` (blocking; raise :class:`SourceError`; set ``kinds``) and
    ``_run()`` (blocking; push items with ``self._emit``; return at the end of the media, raise
    :class:`SourceError` on a fatal error, return early when ``self._stop`` is set).

    Args:
        name: human-readable source name.
        live: paced in real time (a device, a URL, realtime replay) or produced as fast as consumed.
        counters: shared counters (a private one when None).
        clock: pacing/timestamp clock.
        session_t0: clock reading that is session time 0 (``clock.now()`` at construction when None).
        maxsize: buffer capacity in items.
    """

    def __init__(
        self,
        name: str,
        *,
        live: bool,
        counters: StreamCounters | None = None,
        clock: Clock | None = None,
        session_t0: float | None = None,
        maxsize: int = 64,
    ) -> None:
        self.name = name
        self.kinds: frozenset[str] = frozenset()
        self.live = live
        self.counters = counters if counters is not None else StreamCounters()
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.session_t0 = self.clock.now() if session_t0 is None else session_t0
        self._buffer = FrameBuffer(maxsize, counters=self.counters, name=name)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def kind(self) -> str:
        """``"audio"``, ``"video"`` or ``"audio+video"`` (aiortc-style single-word kind)."""
        return "+".join(k for k in ("audio", "video") if k in self.kinds)

    def session_time(self) -> float:
        """Seconds since session time 0 on this source's clock."""
        return self.clock.now() - self.session_t0

    def _open(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _emit(self, item: Item) -> bool:
        """Hand ``item`` to the loop; False means stop producing."""
        if self._stop.is_set():
            return False
        return self._buffer.put(item, self._stop)

    def _sleep_until_session(self, t_s: float) -> bool:
        """Pace: block until session time ``t_s``; returns False if asked to stop meanwhile."""
        delay = t_s - self.session_time()
        if delay > 0 and self.clock.sleep(delay, self._stop):
            return False
        return not self._stop.is_set()

    async def start(self) -> None:
        """Open the source (in a thread) and start the producer thread."""
        self._buffer.bind(asyncio.get_running_loop())
        await asyncio.to_thread(self._open)
        self._thread = threading.Thread(target=self._thread_main, name=f"src:{self.name}", daemon=True)
        self._thread.start()

    def _thread_main(self) -> None:
        try:
            self._run()
        except SourceError as exc:
            self._buffer.finish(exc)
        except Exception as exc:  # a bug or an unexpected library error: keep it one line for the user
            logger.exception("%s: producer thread failed", self.name)
            self._buffer.finish(SourceError(f"{self.name}: unexpected error: {one_line(exc)}"))
        else:
            self._buffer.finish()

    async def recv(self) -> Item:
        """Next item; raises :class:`SourceEnded` at the end, :class:`SourceError` on failure."""
        return await self._buffer.get()

    async def aclose(self) -> None:
        """Stop the producer thread (bounded wait) and drop buffered items."""
        self._stop.set()
        self._buffer.close()
        thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join, 5.0)
            if thread.is_alive():
                logger.warning("%s: producer thread did not stop within 5 s; abandoning it", self.name)
