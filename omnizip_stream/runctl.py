"""Run control shared by the live runs (``omnizip stream``, ``serve-mqtt``, ``serve``): signals, waits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable
from typing import Any

logger = logging.getLogger(__name__)


class Terminate:
    """SIGTERM (systemd, Docker) and SIGHUP (the terminal closed) as a graceful stop of the run.

    While the stream is being served, the signal sets ``stop``: the run ends as at the end of the
    source, and every context manager exits normally (an embedded broker is never left behind).
    Before that (loading the model), or on a second signal, it cancels the run. Installed only
    where the loop can handle signals (the main thread on Unix).
    """

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.received: str | None = None  # the name of the signal that stopped the run
        self.serving = False
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Handle the signals on the running loop (the main thread on Unix; elsewhere nothing changes)."""
        loop = asyncio.get_running_loop()
        try:
            for signum in self.SIGNALS:
                previous = signal.getsignal(signum)
                loop.add_signal_handler(signum, self._on_signal, signum)
                self._previous[signum] = previous
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            return
        self._loop, self._task = loop, asyncio.current_task()

    def cancelled_by_signal(self) -> bool:
        """On ``CancelledError``: whether this run's SIGTERM/SIGHUP caused it (a stop, not an error).

        True takes the task's cancellation back; False is Ctrl-C or a cancellation from outside (re-raise it).
        """
        uncancel = getattr(asyncio.current_task(), "uncancel", None)  # Python >= 3.11
        return bool(self.received) and not (uncancel is not None and uncancel() > 0)

    def remove(self) -> None:
        """Give the signals back to the handlers that were there before :meth:`install`."""
        if self._loop is None:
            return
        for signum, previous in self._previous.items():
            self._loop.remove_signal_handler(signum)
            with contextlib.suppress(TypeError, ValueError):  # the handler that was there before the run
                signal.signal(signum, previous)
        self._loop = None

    def _on_signal(self, signum: int) -> None:
        self.received = signal.Signals(signum).name
        logger.info("%s: stopping", self.received)
        if self.serving and not self.stop.is_set():
            self.stop.set()
        elif self._task is not None:
            self._task.cancel()


async def first_of(*awaitables: Awaitable[Any]) -> None:
    """Wait until the first of ``awaitables`` finishes; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
