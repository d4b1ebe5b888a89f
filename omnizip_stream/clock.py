"""Clocks: time is data. Live sources pace and timestamp against a :class:`Clock`.

One clock per stream (or per server) is injected into the sources, the windowing, the sessions and
the worker's scheduler: pacing, session time, window deadlines, "behind real time" and lag are all
read from it. ``MonotonicClock`` is the real one; ``ManualClock`` makes time explicit in tests
(sleeping advances it instantly, or, with ``autoadvance=False``, only the test moves it).
Compute latencies (a question's TTFT, per-stage milliseconds) measure the machine, not the stream,
and stay on ``time.perf_counter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Protocol


class Clock(Protocol):
    """A monotonic clock in seconds, usable from worker threads and from the event loop."""

    def now(self) -> float:
        """Return the current time in seconds (arbitrary origin, never goes backwards)."""
        ...

    def sleep(self, seconds: float, interrupt: threading.Event | None = None) -> bool:
        """Block the calling thread for ``seconds``; returns True if ``interrupt`` was set."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Sleep on the event loop for ``seconds``."""
        ...


class MonotonicClock:
    """The real clock: :func:`time.monotonic`."""

    def now(self) -> float:
        """Seconds from :func:`time.monotonic`."""
        return time.monotonic()

    def sleep(self, seconds: float, interrupt: threading.Event | None = None) -> bool:
        """Block for ``seconds`` (wakes early and returns True when ``interrupt`` is set)."""
        if seconds <= 0:
            return bool(interrupt is not None and interrupt.is_set())
        if interrupt is None:
            time.sleep(seconds)
            return False
        return interrupt.wait(seconds)

    async def asleep(self, seconds: float) -> None:
        """``asyncio.sleep(seconds)``."""
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that only moves when told to (thread-safe).

    By default sleeping advances it at once, so paced code runs at full speed while still seeing
    consistent times. With ``autoadvance=False`` only :meth:`advance` moves it: a sleeper (a paced
    source thread, a ticker on the event loop, a simulated model) waits until the test has advanced
    the clock past its wake-up time, so a test steps the whole pipeline through time deterministically.

    Args:
        start_s: initial reading in seconds.
        autoadvance: whether :meth:`sleep` / :meth:`asleep` move the clock themselves.
    """

    def __init__(self, start_s: float = 0.0, *, autoadvance: bool = True) -> None:
        self._t = float(start_s)
        self.autoadvance = autoadvance
        self._lock = threading.Lock()
        self._moved = threading.Condition(self._lock)
        self._waiters: list[tuple[float, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def now(self) -> float:
        """Return the current manual time in seconds."""
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (must be >= 0), waking the sleepers that are due."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards (advance by {seconds})")
        with self._lock:
            self._t += seconds
            self._moved.notify_all()
            due = [w for w in self._waiters if w[0] <= self._t]
            self._waiters = [w for w in self._waiters if w[0] > self._t]
        for _, loop, fut in due:
            with contextlib.suppress(RuntimeError):  # the sleeper's loop is closed
                loop.call_soon_threadsafe(_wake, fut)

    def advance_to(self, t_s: float) -> None:
        """Move time forward to ``t_s`` (no-op when already there or past it)."""
        self.advance(max(0.0, t_s - self.now()))

    def sleep(self, seconds: float, interrupt: threading.Event | None = None) -> bool:
        """Advance time by ``seconds`` (or, without autoadvance, wait until it has been advanced).

        Returns whether ``interrupt`` is set (a waiting sleeper notices it within 50 ms).
        """
        if self.autoadvance:
            if seconds > 0:
                self.advance(seconds)
            return bool(interrupt is not None and interrupt.is_set())
        with self._lock:
            wake_s = self._t + max(0.0, seconds)
            while self._t < wake_s:
                if interrupt is not None and interrupt.is_set():
                    return True
                self._moved.wait(0.05)
        return bool(interrupt is not None and interrupt.is_set())

    async def asleep(self, seconds: float) -> None:
        """Advance time by ``seconds`` and yield to the loop once (without autoadvance: wait for it)."""
        if self.autoadvance:
            if seconds > 0:
                self.advance(seconds)
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            wake_s = self._t + max(0.0, seconds)
            if wake_s <= self._t:
                fut.set_result(None)
            else:
                self._waiters.append((wake_s, loop, fut))
        try:
            await fut
        finally:
            with self._lock:
                self._waiters = [w for w in self._waiters if w[2] is not fut]


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
