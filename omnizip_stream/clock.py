"""Clocks: time is data. Live sources pace and timestamp against a :class:`Clock`.

``MonotonicClock`` is the real one; ``ManualClock`` makes time explicit in tests (sleeping advances it
instantly, so paced code runs at full speed while still seeing consistent times).
"""

from __future__ import annotations

import asyncio
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
    """A clock that only moves when told to; sleeping advances it at once (thread-safe).

    Args:
        start_s: initial reading in seconds.
    """

    def __init__(self, start_s: float = 0.0) -> None:
        self._t = float(start_s)
        self._lock = threading.Lock()

    def now(self) -> float:
        """Return the current manual time in seconds."""
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (must be >= 0)."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards (advance by {seconds})")
        with self._lock:
            self._t += seconds

    def sleep(self, seconds: float, interrupt: threading.Event | None = None) -> bool:
        """Advance time by ``seconds`` without blocking; returns whether ``interrupt`` is set."""
        if seconds > 0:
            self.advance(seconds)
        return bool(interrupt is not None and interrupt.is_set())

    async def asleep(self, seconds: float) -> None:
        """Advance time by ``seconds`` and yield to the loop once."""
        if seconds > 0:
            self.advance(seconds)
        await asyncio.sleep(0)
