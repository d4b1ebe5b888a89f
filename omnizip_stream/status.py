"""LiveStatus: where a live stream stands against the live source (the lag and the sources' counters).

Part of :meth:`StreamSession.stats() <omnizip_stream.session.StreamSession.stats>`, the one status
model that the terminal's status line and the MQTT status topic both show.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class LiveStatus:
    """How far the cache is behind the live source, and the sources' drop counters.

    "Behind live" (``window_lag_s``): when the newest window landed in the cache, the live clock
    minus its end; while a window waits for the model, the live clock minus the end of the oldest
    waiting one (so it grows while the model is stuck). None without a live clock (a replay
    faster than real time); frozen once the source has ended.

    Written by the model thread (``window_landed``) and the event loop; every field is a single
    reference assignment.
    """

    def __init__(self) -> None:
        self.counters: Any = None  # the sources' StreamCounters (``snapshot()``)
        self.live_clock: Callable[[], float] | None = None
        self.source_ended = False
        self.last_t1_s: float | None = None  # end of the newest ingested window (stream seconds)
        self._behind_live_s: float | None = None
        # Set by a StreamServer: the source's state (running, retrying, ended, failed), re-opens, last failure.
        self.source_state: str | None = None
        self.source_retries = 0
        self.source_error: str | None = None

    def window_landed(self, t1_s: float) -> None:
        """A window ending at stream time ``t1_s`` is now in the cache (model thread)."""
        self.last_t1_s = t1_s
        if self.live_clock is not None:
            self._behind_live_s = max(0.0, self.live_clock() - t1_s)

    def fields(self, oldest_pending_t1_s: float | None) -> dict[str, Any]:
        """``source_ended``, ``window_lag_s``, ``last_window_t1_s`` and ``source`` (when known) for ``stats()``.

        Args:
            oldest_pending_t1_s: end of the oldest window pushed but not yet in the cache, or None.
        """
        out: dict[str, Any] = {"source_ended": self.source_ended}
        behind = self._behind_live_s
        if self.live_clock is not None and oldest_pending_t1_s is not None and not self.source_ended:
            behind = max(behind or 0.0, self.live_clock() - oldest_pending_t1_s)
        out["window_lag_s"] = behind
        if self.last_t1_s is not None:
            out["last_window_t1_s"] = self.last_t1_s
        if self.counters is not None:
            out["source"] = self.counters.snapshot()
        if self.source_state is not None:
            out.update(source_state=self.source_state, source_retries=self.source_retries,
                       source_error=self.source_error)
        return out
