"""StreamSession: the asyncio face of a stream; the model runs on one dedicated thread.

The event loop never touches the model. Windows and questions go into two bounded queues served by
the model thread, questions first (a question waits at most for the window being processed). When
windows pile up and the oldest pending one is more than a window behind real time (the model is
slower than the live source), pending windows lose their video oldest-first (audio is never dropped
silently; every dropped frame is counted); otherwise (a replay faster than real time, or video
already shed) ``push_window`` waits, which backpressures the source. A full question queue answers
``busy`` at once instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from omnizip_stream.answer_stream import AnswerStream
from omnizip_stream.config import StreamConfig
from omnizip_stream.engine import QueryResult, StreamEngine, WindowReport
from omnizip_stream.query.base import Answer, QueryError
from omnizip_stream.status import LiveStatus
from omnizip_stream.window import Window

logger = logging.getLogger(__name__)


@dataclass
class _Query:
    question: str
    max_new_tokens: int
    submitted_at: float
    future: asyncio.Future[QueryResult]
    on_text: Callable[[str], None] | None


class StreamSession:
    """A live stream: push windows, ask questions, read stats.

    Use ``async with StreamSession.from_config(cfg) as session:``. The model is loaded on the model
    thread when the session is entered (pass ``adapter=`` to reuse an already loaded one).
    """

    def __init__(self, config: StreamConfig, *, adapter: Any = None) -> None:
        self.config = config
        self._adapter = adapter
        self.engine: StreamEngine | None = None
        self._cond = threading.Condition()
        self._windows: collections.deque[tuple[Window, float]] = collections.deque()
        self._queries: collections.deque[_Query] = collections.deque()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._space = asyncio.Event()
        self._idle = asyncio.Event()
        self._progress = asyncio.Event()
        self._stopping = False
        self._busy = False
        self._snapshot: dict[str, Any] = {}
        self.reports: collections.deque[WindowReport] = collections.deque(maxlen=256)
        self.counters = {
            "video_dropped": 0, "windows_video_stripped": 0, "windows_failed": 0, "windows_discarded": 0,
            "queries_answered": 0, "queries_failed": 0, "queries_busy": 0,
        }
        self._last_lag_s = 0.0
        self._clock_origin: float | None = None  # perf_counter() at stream time 0 (first push)
        self._exited: asyncio.Future[None] | None = None  # set when the model thread has returned
        self.live = LiveStatus()  # behind-live and the sources' counters (see attach_source)
        self._current_t1_s: float | None = None  # end of the window the model thread is ingesting

    @classmethod
    def from_config(cls, config: StreamConfig, *, adapter: Any = None) -> StreamSession:
        """A session for ``config`` (not started: enter it with ``async with``)."""
        return cls(config, adapter=adapter)

    @property
    def adapter(self) -> Any:
        """The model adapter (loaded once the session has been entered)."""
        return self._adapter

    def attach_source(self, counters: Any = None, *, live_clock: Callable[[], float] | None = None) -> None:
        """Report the sources' counters and the live clock in :meth:`stats` (one status model).

        Args:
            counters: the sources' :class:`~omnizip_stream.sources.base.StreamCounters` (``snapshot()``).
            live_clock: seconds of live stream time now (``WindowStream.session_time``), or None for a
                replay faster than real time, where "behind live" has no meaning.
        """
        self.live.counters = counters
        self.live.live_clock = live_clock

    def end_of_source(self) -> None:
        """Mark the source as ended: "behind live" stops growing, ``stats()["source_ended"]`` is True."""
        self.live.source_ended = True

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> StreamSession:
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._exited = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="omnizip-model", daemon=True)
        self._thread.start()
        try:
            await ready
        except asyncio.CancelledError:
            # Cancelled during a (possibly long) model load: Ctrl-C must not wait for it. The daemon
            # thread stops as soon as the load returns.
            with self._cond:
                self._stopping = True
            raise
        except BaseException:
            await self._exited  # the load failed: the thread has returned
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the model thread; pending windows are discarded (counted), pending questions fail."""
        with self._cond:
            self._stopping = True
            self.counters["windows_discarded"] += len(self._windows)
            self._windows.clear()
            pending = list(self._queries)
            self._queries.clear()
            self._cond.notify_all()
        for q in pending:
            if not q.future.done():
                q.future.set_exception(QueryError("internal", "the stream session was closed"))
        if self._thread is not None:
            # Awaited as a future, not joined in an executor thread: a second Ctrl-C must not wait for it.
            assert self._exited is not None
            await asyncio.shield(self._exited)
            self._thread = None

    def _post(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the event loop (from the model thread); a closed loop is ignored."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the process is exiting (a second Ctrl-C)
            pass

    def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            self._serve(ready)
        finally:
            assert self._exited is not None
            self._post(_set_result, self._exited, None)

    def _serve(self, ready: asyncio.Future[None]) -> None:
        try:
            _set_torch_threads(self.config.torch_threads)
            adapter = self._adapter
            if adapter is None:
                from omnizip.adapters.loading import load_adapter

                cfg = self.config
                adapter = load_adapter(cfg.model, device=cfg.device, dtype=cfg.dtype, attn=cfg.attn,
                                       video_max_pixels=cfg.video_max_pixels, seed=cfg.seed)
                self._adapter = adapter
            self.engine = StreamEngine(adapter, self.config)
            self.engine.start()
            self._publish_stats()
        except BaseException as exc:  # noqa: BLE001 - reported to the awaiting coroutine
            self._post(_set_exception, ready, exc)
            return
        self._post(_set_result, ready, None)
        while True:
            with self._cond:
                while not self._stopping and not self._queries and not self._windows:
                    self._cond.wait()
                if self._stopping:
                    return
                job: Any = self._queries.popleft() if self._queries else self._windows.popleft()
                self._busy = True
                if not isinstance(job, _Query):
                    self._current_t1_s = job[0].t1_s
            if isinstance(job, _Query):
                self._serve_query(job)  # a query leaves the stream state (and its stats) unchanged
            else:
                self._post(self._space.set)
                self._serve_window(*job)
                self._publish_stats()
                self._post(self._progress.set)
            with self._cond:
                self._busy = False
                self._current_t1_s = None
                if not self._queries and not self._windows:
                    self._post(self._idle.set)

    def _serve_window(self, window: Window, pushed_at: float) -> None:
        assert self.engine is not None
        try:
            report = self.engine.ingest(window)
            self.reports.append(report)
            self._last_lag_s = time.perf_counter() - pushed_at
            self.live.window_landed(report.t1_s)
        except Exception:  # a bad window must not stop the stream
            self.counters["windows_failed"] += 1
            logger.exception("window at t=%.1fs failed; the stream continues", window.t0_s)

    def _serve_query(self, query: _Query) -> None:
        assert self.engine is not None
        callback = query.on_text

        def on_text(piece: str) -> None:
            if self._stopping:  # closing (Ctrl-C, SIGTERM): do not finish a long answer nobody waits for
                raise _Closed
            if callback is not None:
                self._post(callback, piece)

        try:
            result = self.engine.answer(query.question, query.max_new_tokens, submitted_at=query.submitted_at,
                                        on_text=on_text)
        except QueryError as exc:
            self.counters["queries_failed"] += 1
            self._post(_set_exception, query.future, exc)
            return
        except _Closed:
            self.counters["queries_failed"] += 1
            self._post(_set_exception, query.future, QueryError("internal", "the stream session was closed"))
            return
        except Exception as exc:
            self.counters["queries_failed"] += 1
            logger.exception("query failed")
            self._post(_set_exception, query.future, QueryError("internal", f"answer failed: {exc}"))
            return
        self.counters["queries_answered"] += 1
        self._post(_set_result, query.future, result)

    def _publish_stats(self) -> None:
        assert self.engine is not None
        self._snapshot = self.engine.stats()

    # ------------------------------------------------------------------ windows
    async def push_window(self, window: Window) -> None:
        """Queue a window for ingestion (waits when the queue is full even after dropping video)."""
        self._check_running()
        while True:
            self._space.clear()
            now = time.perf_counter()
            if self._clock_origin is None:
                self._clock_origin = now - window.t1_s  # a live window can arrive at its end at the earliest
            with self._cond:
                if len(self._windows) < self.config.window_queue:
                    self._windows.append((window, now))
                    self._cond.notify()
                    return
                oldest = self._windows[0][0]
                behind_s = now - (self._clock_origin + oldest.t1_s)
                if behind_s > self.config.window_s:
                    # Live and the model is behind real time: shed video, never audio.
                    self._strip_oldest_video()
            await self._space.wait()
            self._check_running()

    def _strip_oldest_video(self) -> None:
        """Drop the video of the oldest pending window that still has some (lock held)."""
        for i, (pending, pushed_at) in enumerate(self._windows):
            if pending.num_frames:
                dropped = dataclasses.replace(
                    pending, frames=np.zeros((0, 0, 0, 3), np.uint8), frame_pts_s=np.zeros(0),
                    duration_s=pending.duration_s, video_dropped=pending.video_dropped + pending.num_frames,
                )
                self._windows[i] = (dropped, pushed_at)
                self.counters["video_dropped"] += pending.num_frames
                self.counters["windows_video_stripped"] += 1
                logger.warning("model behind real time: dropped %d frames of window t=%.1fs",
                               pending.num_frames, pending.t0_s)
                return

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
        """Wait until every pushed window has been ingested (and no question is pending)."""
        self._check_running()
        while True:
            with self._cond:
                if not self._windows and not self._queries and not self._busy:
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
        query = _Query(
            question, max_new_tokens or self.config.max_new_tokens, time.perf_counter(),
            self._loop.create_future(), on_text,
        )
        with self._cond:
            if len(self._queries) >= self.config.query_queue:
                self.counters["queries_busy"] += 1
                raise QueryError("busy", f"{len(self._queries)} questions are already waiting; try again later")
            self._queries.append(query)
            self._cond.notify()
        result = await query.future
        return Answer(
            text=result.text, ttft_ms=result.ttft_ms, total_ms=result.total_ms, window_range=result.window_range,
            time_range_s=result.time_range_s, tokens_generated=len(result.tokens),
            extra={"prompt_tokens": result.prompt_tokens, **result.extra}, **result.spans,
        )

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

        try:
            await asyncio.wait_for(first_window(), wait_s)
        except asyncio.TimeoutError:
            pass
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

        Engine stats (last snapshot), session queues and drops, and :class:`LiveStatus`'s fields:
        ``window_lag_s`` (how far the cache is behind the live source; None without a live clock),
        ``source_ended`` and, once :meth:`attach_source` was called, ``source`` (its drop counters).
        """
        with self._cond:
            queued_windows, queued_queries = len(self._windows), len(self._queries)
            oldest_t1 = self._current_t1_s if self._current_t1_s is not None else (
                self._windows[0][0].t1_s if self._windows else None)
        out = dict(self._snapshot)
        out.update(self.counters)
        out.update({"windows_queued": queued_windows, "queries_queued": queued_queries,
                    "ingest_lag_s": self._last_lag_s})
        if self.reports:
            out["last_window_ms"] = self.reports[-1].timings_ms
        out.update(self.live.fields(oldest_t1))
        return out

    def _check_running(self) -> None:
        if self._thread is None or self._stopping:
            raise QueryError("not_ready", "the stream session is not running")


class _Closed(Exception):
    """Raised on the model thread to abandon an answer when the session closes."""


def _set_torch_threads(requested: int) -> None:
    """Apply ``StreamConfig.torch_threads`` (0 = auto: leave a core to decoding and I/O on CPU)."""
    import os

    import torch

    if requested > 0:
        torch.set_num_threads(requested)
        return
    cores = os.cpu_count() or 1
    if cores > 1 and torch.get_num_threads() >= cores:
        torch.set_num_threads(cores - 1)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
