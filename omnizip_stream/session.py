"""StreamSession: the asyncio face of one stream; the model runs on its worker's one model thread.

The event loop never touches the model. Windows and questions go into two bounded per-stream queues
served by a :class:`~omnizip_stream.server.worker.ModelWorker` (questions first: a question waits at
most for the window, or batch of several streams' windows, being processed). A session made with ``StreamSession.from_config(cfg)`` alone
starts a private one-stream worker; ``ModelWorker.add_stream`` makes one of many sessions sharing a
model. Time (deadlines, "behind real time", lags) is read from one injected
:class:`~omnizip_stream.clock.Clock`: the worker's, shared by its streams.

The one video drop policy lives here (:func:`~omnizip_stream.server.scheduler.shed_video`): when a
live stream's oldest pending window is more than a window behind real time (the model is slower than
the live source), ``push_window`` never makes the source wait; only the newest ``window_queue``
pending windows keep their video (audio is never dropped silently; every drop is counted in the
stream's one set of counters, ``stats()``). Otherwise (a replay without a live clock, or a live
stream less than a window behind) a full queue makes ``push_window`` wait, which backpressures the
source. A full question queue answers ``busy`` at once instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from omnizip_stream.answer_stream import AnswerStream
from omnizip_stream.clock import Clock
from omnizip_stream.config import StreamConfig
from omnizip_stream.engine import StreamEngine, WindowReport
from omnizip_stream.query.base import Answer, QueryError
from omnizip_stream.server.jobs import PendingQuestion, StreamJobs
from omnizip_stream.server.scheduler import MAX_BACKLOG_S, PendingWindow, shed_video
from omnizip_stream.server.worker import ModelWorker
from omnizip_stream.sources.base import StreamCounters
from omnizip_stream.status import LiveStatus
from omnizip_stream.watch.registry import StreamWatches
from omnizip_stream.window import Window
from omnizip_stream.windowing import on_grid

logger = logging.getLogger(__name__)


class StreamSession(StreamJobs):
    """A live stream: push windows, ask questions, read stats.

    Use ``async with StreamSession.from_config(cfg) as session:`` (a private worker: the model is
    loaded on its thread when the session is entered; pass ``adapter=`` to reuse a loaded one), or
    ``await worker.add_stream(stream_id, cfg)`` to share one worker's model between streams.

    Args:
        config: the stream's configuration.
        adapter: for a private worker, an already loaded adapter.
        worker: the shared worker to register with (None: a private one-stream worker).
        stream_id: the stream's id in its worker's registry.
        clock: the clock of a private worker (default :class:`~omnizip_stream.clock.MonotonicClock`);
            a stream of a shared worker uses the worker's clock.
        max_backlog_s: pending audio a live stream behind real time keeps before whole windows are
            dropped (counted and logged).
    """

    def __init__(self, config: StreamConfig, *, adapter: Any = None, worker: ModelWorker | None = None,
                 stream_id: str = "default", clock: Clock | None = None,
                 max_backlog_s: float = MAX_BACKLOG_S) -> None:
        if worker is not None and clock is not None and clock is not worker.clock:
            raise ValueError("a stream of a shared worker uses the worker's clock (pass clock= to ModelWorker)")
        self.config = config
        self.stream_id = stream_id
        self._owns_worker = worker is None
        self._worker = worker if worker is not None else ModelWorker(config, adapter=adapter, clock=clock)
        self.clock: Clock = self._worker.clock
        self.max_backlog_s = max_backlog_s
        self._cond = self._worker.cond  # one lock for every stream of the worker
        self.engine: StreamEngine | None = None
        self.windows: collections.deque[PendingWindow] = collections.deque()
        self.queries: collections.deque[PendingQuestion] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._space = asyncio.Event()
        self._idle = asyncio.Event()
        self._progress = asyncio.Event()
        self.stopping = False  # closed (or being closed): no more work is accepted or run
        self._registered = False
        self._busy = False
        self._snapshot: dict[str, Any] = {}
        self.reports: collections.deque[WindowReport] = collections.deque(maxlen=256)
        self.counters = {
            "windows_failed": 0, "windows_discarded": 0, "queries_answered": 0, "queries_failed": 0,
            "queries_busy": 0,
        }
        # The stream's one set of media counters (drops included); the source's once attached.
        self.media = StreamCounters()
        self.last_error: str | None = None  # the last failure of this stream's windows or questions
        self._last_lag_s = 0.0
        self._clock_origin: float | None = None  # clock time at stream time 0 without a live clock (first push)
        self.live = LiveStatus()  # behind-live and the sources' counters (see attach_source)
        self._current_t1_s: float | None = None  # end of the window the model thread is ingesting
        self.watches = StreamWatches(stream_id)  # standing questions (omnizip_stream.watch)
        # Called on the event loop with every Answer given, whoever asked (MQTT, HTTP, the CLI): metrics.
        self.answer_listeners: list[Callable[[Answer], None]] = []

    @classmethod
    def from_config(cls, config: StreamConfig, *, adapter: Any = None, clock: Clock | None = None) -> StreamSession:
        """A one-stream session for ``config`` with a private worker (enter it with ``async with``)."""
        return cls(config, adapter=adapter, clock=clock)

    @property
    def adapter(self) -> Any:
        """The model adapter (loaded once the session has been entered)."""
        return self._worker.adapter

    @property
    def worker(self) -> ModelWorker:
        """The worker whose model thread serves this stream."""
        return self._worker

    def attach_source(self, counters: Any = None, *, live_clock: Callable[[], float] | None = None) -> None:
        """Share the sources' counters and the live clock (one status model, one set of counters).

        Args:
            counters: the sources' :class:`~omnizip_stream.sources.base.StreamCounters`: from now on the
                stream's one set of counters (the session's drops are counted in it, and what was
                counted before is carried over); ``stats()["source"]`` is its snapshot.
            live_clock: seconds of live stream time now (``WindowStream.session_time``, on the same
                clock as this session), or None for a replay faster than real time, where "behind
                live" has no meaning and nothing is dropped (``push_window`` waits instead).
        """
        if counters is not None and counters is not self.media:
            counters.add(**{k: v for k, v in self.media.snapshot().items() if v})
            self.media = counters
        self.live.counters = counters
        self.live.live_clock = live_clock

    def end_of_source(self) -> None:
        """Mark the source as ended: "behind live" stops growing, ``stats()["source_ended"]`` is True."""
        self.live.source_ended = True

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> StreamSession:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start a private worker if this session has one, then register the stream (sink prefill)."""
        self._loop = asyncio.get_running_loop()
        if self._owns_worker:
            await self._worker.start()
        try:
            await self._worker.attach(self)
        except asyncio.CancelledError:
            if self._owns_worker:
                self._worker.stop_soon()
            raise
        except BaseException:
            if self._owns_worker:
                await self._worker.close()
            raise
        self._registered = True

    async def close(self) -> None:
        """Leave the worker: pending windows are discarded (counted), pending questions fail.

        Waits for the job of this stream that is running (an answer in progress stops at its next
        piece); a private worker is stopped too.
        """
        if not self.stopping:
            for q in self._worker.detach(self):
                if not q.future.done():
                    q.future.set_exception(QueryError("internal", "the stream session was closed"))
            self._space.set()  # a push waiting for room now sees the session closed
            await asyncio.shield(self._released())  # a second Ctrl-C must not wait for it
        if self._owns_worker:
            await self._worker.close()

    async def _released(self) -> None:
        """Wait until the model thread is not running a job of this stream."""
        while True:
            with self._cond:
                if not self._busy:
                    return
                self._idle.clear()
            await self._idle.wait()

    # ------------------------------------------------------------------ windows
    async def push_window(self, window: Window) -> None:
        """Queue a window for ingestion (see the module docstring for when it waits and what it sheds).

        A window made by hand is put on the model's grid first
        (:func:`~omnizip_stream.windowing.on_grid`; windows of a ``Windower`` already are).
        """
        self._check_running()
        window_s = self.config.window_s
        assert window_s is not None  # resolved on the model when the stream was attached (worker.attach)
        window = on_grid(window, self.adapter.spec.fps, window_s, counters=self.media)
        while True:
            self._space.clear()
            now = self.clock.now()
            if self._clock_origin is None:
                self._clock_origin = now - window.t1_s  # a live window can arrive at its end at the earliest
            stream_now_s = self._stream_time_s(now)
            with self._cond:
                behind_s = stream_now_s - self.windows[0].window.t1_s if self.windows else 0.0
                shedding = self.live.live_clock is not None and behind_s > window_s
                if len(self.windows) < self.config.window_queue or shedding:
                    deadline_s = now - stream_now_s + window.t1_s  # complete at the live source then
                    prepared = self._worker.preparer.prepare(self.adapter, window, self.config)
                    self.windows.append(PendingWindow(window, now, deadline_s, self._worker.next_seq(), prepared))
                    if shedding:  # live and the model is behind real time: the one drop policy
                        shed = shed_video(self.windows, keep_video=self.config.window_queue,
                                          max_backlog_s=self.max_backlog_s)
                        self.media.add(**shed.counts())
                    self._cond.notify_all()
                    return
            await self._space.wait()
            self._check_running()

    def _stream_time_s(self, now: float) -> float:
        """Live stream seconds at clock time ``now``: the live clock's, else since the first push (a replay)."""
        if self.live.live_clock is not None:
            return float(self.live.live_clock())
        assert self._clock_origin is not None
        return now - self._clock_origin

    async def wait_windows(self, *, count: int | None = None, until_s: float | None = None) -> None:
        """Wait until ``count`` windows were ingested, or the stream reached ``until_s`` seconds."""
        self._check_running()
        while True:
            self._progress.clear()
            ingested = self._snapshot.get("windows_ingested", 0) + self.counters["windows_failed"]
            last_t1 = self.live.last_t1_s or 0.0
            done = (count is None or ingested >= count) and (until_s is None or last_t1 >= until_s)
            if done:
                return
            await self._progress.wait()

    async def drain(self) -> None:
        """Wait until every pushed window has been ingested (and no question or standing question is pending)."""
        self._check_running()
        while True:
            with self._cond:
                if not self.windows and not self.queries and not self._busy and not self.watches.due:
                    return
                self._idle.clear()
            await self._idle.wait()

    # ------------------------------------------------------------------ questions
    async def ask(
        self, question: str, max_new_tokens: int | None = None, *, on_text: Callable[[str], None] | None = None
    ) -> Answer:
        """Answer ``question`` about the stream so far (see :class:`~omnizip_stream.query.base.QueryService`).

        A question asked before the first window waits up to ``config.first_window_wait_s`` for one.

        Raises:
            QueryError: ``bad_request``, ``too_long``, ``busy``, ``not_ready`` (no window yet) or ``internal``.
        """
        self._check_running()
        if not isinstance(question, str) or not question.strip():
            raise QueryError("bad_request", "the question must be a non-empty string")
        if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
            raise QueryError("bad_request", "max_new_tokens must be a positive integer")
        await self._wait_first_window()
        assert self._loop is not None
        query = PendingQuestion(
            question, max_new_tokens or self.config.max_new_tokens, time.perf_counter(),
            self._loop.create_future(), on_text,
        )
        with self._cond:
            if len(self.queries) >= self.config.query_queue:
                self.counters["queries_busy"] += 1
                raise QueryError("busy", f"{len(self.queries)} questions are already waiting; try again later")
            self.queries.append(query)
            self._cond.notify_all()
        result = await query.future
        answer = Answer(
            text=result.text, ttft_ms=result.ttft_ms, total_ms=result.total_ms, window_range=result.window_range,
            time_range_s=result.time_range_s, tokens_generated=len(result.tokens),
            extra={"prompt_tokens": result.prompt_tokens, **result.extra}, **result.spans,
        )
        for listener in list(self.answer_listeners):
            try:
                listener(answer)
            except Exception:  # a listener's bug never costs the asker the answer
                logger.exception("stream %s: answer listener failed", self.stream_id)
        return answer

    async def _wait_first_window(self) -> None:
        """Wait up to ``first_window_wait_s`` for the first ingested window; else ``not_ready``."""
        if self._snapshot.get("windows_ingested", 0):
            return
        wait_s = self.config.first_window_wait_s

        async def first_window() -> None:
            while not self._snapshot.get("windows_ingested", 0) and not self.live.source_ended:
                self._progress.clear()
                await self._progress.wait()
                self._check_running()

        waiter = asyncio.ensure_future(first_window())
        timer = asyncio.ensure_future(self.clock.asleep(wait_s))  # the stream's clock, not the loop's
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, timer):
                task.cancel()
            await asyncio.gather(waiter, timer, return_exceptions=True)
        if waiter.done() and not waiter.cancelled() and waiter.exception() is not None:
            raise waiter.exception()  # type: ignore[misc]
        if not self._snapshot.get("windows_ingested", 0):
            raise QueryError("not_ready", "no window of the stream has been ingested yet "
                                          f"(waited {wait_s:g} s); ask again once the stream has started")

    def ask_stream(self, question: str, max_new_tokens: int | None = None) -> AnswerStream:
        """Stream the answer piece by piece.

        ``async for piece in session.ask_stream(q)`` yields text pieces as they are generated; afterwards
        ``stream.answer`` holds the complete :class:`Answer` (latencies, window range).

        Raises (while iterating):
            QueryError: ``bad_request``, ``too_long``, ``busy`` or ``internal``.
        """
        return AnswerStream(self, question, max_new_tokens)

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict[str, Any]:
        """Live counters: the one status model (the terminal's status line and the MQTT status topic).

        Engine stats (last snapshot), session queues, the stream's drop counters (``video_dropped``,
        ``windows_video_stripped``, ``windows_dropped``, ``audio_dropped_samples``: its one set of
        counters, the same numbers as in ``source``), ``ingest_lag_s`` (clock seconds from the newest
        ingested window's push to its landing), and :class:`LiveStatus`'s fields:
        ``window_lag_s`` (how far the cache is behind the live source; None without a live clock),
        ``source_ended`` and, once :meth:`attach_source` was called, ``source`` (its drop counters).
        """
        with self._cond:
            queued_windows, queued_queries = len(self.windows), len(self.queries)
            oldest_t1 = self._current_t1_s if self._current_t1_s is not None else (
                self.windows[0].window.t1_s if self.windows else None)
        out = dict(self._snapshot)
        out.update(self.counters)
        media = self.media.snapshot()
        out.update({key: media[key] for key in DROP_KEYS})
        out.update({"windows_queued": queued_windows, "queries_queued": queued_queries,
                    "ingest_lag_s": self._last_lag_s})
        if self.reports:
            out["last_window_ms"] = self.reports[-1].timings_ms
            out["last_window"] = window_summary(self.reports[-1])
        out.update(self.live.fields(oldest_t1))
        if len(self.watches) or self.watches.counters["watch_evaluations"]:
            out.update(self.watches.stats())
        return out

    def _check_running(self) -> None:
        if not self._registered or self.stopping or not self._worker.running:
            raise QueryError("not_ready", "the stream session is not running")


def window_summary(report: WindowReport) -> dict[str, Any]:
    """One window's compression as plain JSON: index, times, tokens in/kept per modality.

    ``audio_retention`` (audio_kept / audio_tokens) and ``video_keep_ratio`` (video_kept / video_tokens)
    are the audio-guided budget of each window (None for a modality the window did not carry).
    """
    return {"index": report.index, "t0_s": report.t0_s, "t1_s": report.t1_s,
            "audio_tokens": report.audio_tokens, "audio_kept": report.audio_kept,
            "video_tokens": report.video_tokens, "video_kept": report.video_kept,
            "audio_retention": report.audio_kept / report.audio_tokens if report.audio_tokens else None,
            "video_keep_ratio": report.video_kept / report.video_tokens if report.video_tokens else None}


DROP_KEYS = ("video_dropped", "windows_video_stripped", "windows_dropped", "audio_dropped_samples")
"""The stream's drop counters in ``stats()`` (from its one :class:`StreamCounters`)."""
