"""The model thread's side of a stream: what the worker calls on a :class:`~omnizip_stream.session.StreamSession`.

:class:`StreamJobs` is a base of ``StreamSession`` (split out to keep the asyncio face and the model
thread's side apart): a job taken off the stream's queues (``job_started``), the outcome of one of its
windows (``window_done``) or questions (``ask_for`` -> ``query_done``), whether it ran alone or in a
batch of several streams (:mod:`omnizip_stream.server.batch`), and the end of the job (``job_done``).
Everything here runs on the worker's model thread; results reach the stream's event loop via ``_post``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omnizip_stream.batch import Ask
from omnizip_stream.engine import QueryResult, StreamEngine, WindowReport
from omnizip_stream.query.base import QueryError
from omnizip_stream.server.scheduler import PendingWindow
from omnizip_stream.server.worker import set_exception, set_result
from omnizip_stream.status import LiveStatus

if TYPE_CHECKING:
    from omnizip_stream.clock import Clock
    from omnizip_stream.server.worker import ModelWorker
    from omnizip_stream.watch.registry import StreamWatches

logger = logging.getLogger(__name__)


@dataclass
class PendingQuestion:
    """A question waiting for the model (the asker's future and piece receiver)."""

    question: str
    max_new_tokens: int
    submitted_at: float  # time.perf_counter(): a question's latency measures the machine, not the stream
    future: asyncio.Future[QueryResult]
    on_text: Callable[[str], None] | None


class StreamJobs:
    """The model thread's side of a stream (see the module docstring); state lives on the session."""

    stream_id: str
    engine: StreamEngine | None
    windows: collections.deque[PendingWindow]
    queries: collections.deque[PendingQuestion]
    counters: dict[str, int]
    reports: collections.deque[WindowReport]
    last_error: str | None
    live: LiveStatus
    watches: StreamWatches
    clock: Clock
    stopping: bool
    _worker: ModelWorker
    _loop: asyncio.AbstractEventLoop | None
    _busy: bool
    _current_t1_s: float | None
    _last_lag_s: float
    _snapshot: dict[str, Any]
    _space: asyncio.Event
    _idle: asyncio.Event
    _progress: asyncio.Event

    def _post(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the session's event loop (from the model thread)."""
        self._worker.post(self._loop, callback, *args)

    def job_started(self, item: Any) -> None:
        """The worker took ``item`` (a question or a :class:`PendingWindow`) off this stream (lock held)."""
        self._busy = True
        if isinstance(item, PendingWindow):
            self._current_t1_s = item.window.t1_s
            self._post(self._space.set)

    def job_done(self) -> None:
        """The worker finished this stream's job (lock held)."""
        self._busy = False
        self._current_t1_s = None
        if not self.queries and not self.windows:
            self._post(self._idle.set)

    def job_failed(self, kind: str, exc: BaseException) -> None:
        """A job of this stream raised past its own handling: reported here, the worker goes on."""
        self.last_error = f"{kind}: {type(exc).__name__}: {exc}"
        logger.error("stream %s: %s job failed: %s", self.stream_id, kind, exc, exc_info=exc)

    def window_done(self, pending: PendingWindow, outcome: WindowReport | Exception) -> None:
        """Record what ingesting one of this stream's windows gave (model thread)."""
        window = pending.window
        try:
            if isinstance(outcome, Exception):  # a bad window must not stop the stream
                self.counters["windows_failed"] += 1
                self.last_error = f"window t={window.t0_s:.1f}s: {type(outcome).__name__}: {outcome}"
                logger.error("stream %s: window at t=%.1fs failed; the stream continues",
                             self.stream_id, window.t0_s, exc_info=outcome)
            else:
                self.reports.append(outcome)
                self._last_lag_s = self.clock.now() - pending.pushed_at
                self.live.window_landed(outcome.t1_s)
                self.watches.window_done(outcome, backlog=len(self.windows), landed_at=time.time())
            self.publish_stats()
        finally:
            self._post(self._progress.set)

    def ask_for(self, query: PendingQuestion) -> Ask:
        """The engine's view of a question: its pieces go to the asker's loop (model thread)."""
        callback = query.on_text

        def on_text(piece: str) -> None:
            if self.stopping:  # closing (Ctrl-C, SIGTERM): do not finish a long answer nobody waits for
                raise _Closed
            if callback is not None:
                self._post(callback, piece)

        return Ask(query.question, query.max_new_tokens, query.submitted_at, on_text)

    def query_done(self, query: PendingQuestion, outcome: QueryResult | Exception) -> None:
        """Deliver a question's answer or failure (model thread); the stream state is unchanged."""
        if isinstance(outcome, QueryResult):
            self.counters["queries_answered"] += 1
            self._post(set_result, query.future, outcome)
            return
        self.counters["queries_failed"] += 1
        if isinstance(outcome, QueryError):
            error = outcome
        elif isinstance(outcome, _Closed):
            error = QueryError("internal", "the stream session was closed")
        else:
            self.last_error = f"query: {type(outcome).__name__}: {outcome}"
            logger.error("stream %s: query failed", self.stream_id, exc_info=outcome)
            error = QueryError("internal", f"answer failed: {outcome}")
        self._post(set_exception, query.future, error)

    @property
    def watch_due(self) -> bool:
        """Whether standing questions wait to be evaluated after the last window (read by the scheduler)."""
        return bool(self.watches.due)

    def serve_watch(self) -> None:
        """Evaluate the due standing questions (model thread); alerts go to the listeners on the loop."""
        assert self.engine is not None
        try:
            alerts = self.watches.run(self.engine)
        except Exception as exc:  # a failing evaluation must not stop the stream
            self.watches.due = []
            self.watches.counters["watch_failed"] += 1
            self.last_error = f"watch: {type(exc).__name__}: {exc}"
            logger.exception("stream %s: standing questions failed; the stream continues", self.stream_id)
            return
        for alert in alerts:
            self._post(self.watches.deliver, alert)

    def publish_stats(self) -> None:
        """Snapshot the engine's stats for :meth:`stats` (model thread)."""
        assert self.engine is not None
        self._snapshot = self.engine.stats()


class _Closed(Exception):
    """Raised on the model thread to abandon an answer when the session closes."""
