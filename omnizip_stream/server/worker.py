"""ModelWorker: one loaded model, the only model thread, and a registry of live streams.

The worker owns the adapter (loaded once, on its thread) and serves every registered stream from
that one thread. Each stream is a :class:`~omnizip_stream.session.StreamSession`: the per-stream
handle that keeps its own :class:`~omnizip_stream.engine.StreamEngine` (rolling cache, compressor
state, statistics), queues and counters; the model object is shared, never copied.

Usage::

    async with ModelWorker(StreamConfig(model="tiny")) as worker:
        door = await worker.add_stream("door", cfg_door)      # a started StreamSession
        kitchen = await worker.add_stream("kitchen", cfg_kitchen)
        await door.push_window(w)
        answer = await kitchen.ask("Anyone there?")
        await worker.remove_stream("door")                    # pending work is discarded (counted)

Memory: every stream reserves its cache cap (``cache_max_mb``) against the worker's
``kv_budget_mb`` (:mod:`~omnizip_stream.server.budget`); a stream that does not fit is refused with
:class:`~omnizip_stream.server.budget.AdmissionError`, and removing a stream frees its reservation
and its cache tensors (measured).

``StreamSession.from_config(cfg)`` alone makes a private one-stream worker. What runs next is the
:class:`~omnizip_stream.server.scheduler.Scheduler`'s choice (questions round-robin across
streams, then windows by real-time deadline on the worker's one clock); stream start-ups (the sink prefill) run before both.
Up to ``max_batch`` streams' questions, or windows, run together as one batch with one model call per
stage (:mod:`omnizip_stream.batch`). Whatever one stream's part of a batch raises is counted on that
stream and never stops the thread or touches another stream.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from omnizip_stream.clock import Clock, MonotonicClock
from omnizip_stream.config import StreamConfig
from omnizip_stream.engine import StreamEngine
from omnizip_stream.query.base import QueryError
from omnizip_stream.server.batch import serve_batch
from omnizip_stream.server.budget import KVBudget, measure_release
from omnizip_stream.server.prepare import MediaPreparer, default_prepare_threads
from omnizip_stream.server.scheduler import Scheduler

if TYPE_CHECKING:
    from omnizip_stream.session import StreamSession

logger = logging.getLogger(__name__)


@dataclass
class _Control:
    """Work for the model thread that is not a stream's window or question (a stream's start-up)."""

    run: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class ModelWorker:
    """One model, one model thread, many streams (see the module docstring).

    Args:
        config: what to load (``model``, ``device``, ``dtype``, ``attn``, ``video_max_pixels``,
            ``seed``) and ``torch_threads``; streams bring their own configs.
        adapter: an already loaded adapter to serve instead of loading one.
        max_batch: at most this many streams' windows (or questions) run together in one model call
            per stage (1: one job at a time).
        clock: the one clock of its streams (window deadlines, "behind real time", lags); default
            :class:`~omnizip_stream.clock.MonotonicClock`, a :class:`~omnizip_stream.clock.ManualClock`
            in tests.
        kv_budget_mb: memory budget in MiB that the streams' cache caps (``cache_max_mb``) share;
            None: no budget (reservations are still reported).
        prepare_threads: threads that resize and patchify queued windows' frames while the model
            thread computes (:mod:`~omnizip_stream.server.prepare`); None: by core count (1 on 2 cores),
            0: the model thread does it.
    """

    def __init__(self, config: StreamConfig, *, adapter: Any = None, max_batch: int = 8,
                 clock: Clock | None = None, kv_budget_mb: float | None = None,
                 prepare_threads: int | None = None) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.config = config
        self._adapter = adapter
        self.max_batch = max_batch
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.budget = KVBudget(kv_budget_mb)  # guarded by cond
        self.preparer = MediaPreparer(default_prepare_threads() if prepare_threads is None else prepare_threads)
        self.cond = threading.Condition()  # guards the registry and every stream's queues
        self.scheduler = Scheduler()
        self._streams: dict[str, StreamSession] = {}  # registered (and reserved while starting)
        self._controls: collections.deque[_Control] = collections.deque()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exited: asyncio.Future[None] | None = None
        self._stopping = False
        self.on_job: Callable[[str, str], None] | None = None  # model thread: (stream_id, kind) before each job
        self.on_batch: Callable[[str, list[str]], None] | None = None  # model thread: (kind, ids) before each batch

    @property
    def adapter(self) -> Any:
        """The shared model adapter (loaded once the worker has started)."""
        return self._adapter

    @property
    def running(self) -> bool:
        """Whether the model thread is serving."""
        return self._thread is not None and not self._stopping

    def next_seq(self) -> int:
        """Worker-wide push order (ties between windows with the same deadline)."""
        return next(self._seq)

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> ModelWorker:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the model thread and load the model on it (raises what loading raises)."""
        if self._thread is not None:
            return
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
            self.stop_soon()
            raise
        except BaseException:
            await self._exited  # the load failed: the thread has returned
            self._thread = None
            raise

    def stop_soon(self) -> None:
        """Tell the model thread to stop after its current job, without waiting for it."""
        with self.cond:
            self._stopping = True
            self.cond.notify_all()

    async def close(self) -> None:
        """Close every stream (pending work discarded, questions failed), then stop the model thread."""
        # All at once: every stream stops taking work before any waits for its job in progress.
        await asyncio.gather(*(session.close() for session in list(self._streams.values())))
        self.preparer.close()
        self.stop_soon()
        if self._thread is not None:
            # Awaited as a future, not joined in an executor thread: a second Ctrl-C must not wait for it.
            assert self._exited is not None
            await asyncio.shield(self._exited)
            self._thread = None

    # ------------------------------------------------------------------ registry
    def streams(self) -> list[str]:
        """Ids of the registered streams, in the order they were added."""
        with self.cond:
            return [sid for sid, s in self._streams.items() if s.engine is not None]

    def stream(self, stream_id: str) -> StreamSession:
        """The handle of a registered stream (KeyError if there is none)."""
        with self.cond:
            return self._streams[stream_id]

    async def add_stream(self, stream_id: str, config: StreamConfig) -> StreamSession:
        """Register and start a stream; returns its started :class:`StreamSession`.

        Raises:
            AdmissionError: its ``cache_max_mb`` does not fit what is free of ``kv_budget_mb``.
            ValueError: ``stream_id`` is already served, or ``config`` does not fit the model.
            CacheFullError: the config's cache caps leave no room for a question.
        """
        from omnizip_stream.session import StreamSession

        session = StreamSession(config, worker=self, stream_id=stream_id)
        await session.start()
        return session

    async def remove_stream(self, stream_id: str) -> dict[str, Any]:
        """Close a stream and free its memory: pending windows are discarded (counted), questions fail.

        The stream's reservation goes back to the budget and its engine (cache, stored embeddings,
        compressor state) is dropped; ``session.stats()`` keeps the last snapshot.

        Returns:
            What was freed, measured (:func:`~omnizip_stream.server.budget.measure_release`):
            ``held_bytes``, ``still_held_bytes`` (0), ``rss_before_mb`` / ``rss_after_mb``, ``cuda_freed_bytes`` on a GPU.
        """
        session = self.stream(stream_id)
        await session.close()  # waits until the model thread runs no job of the stream
        freed = measure_release(session)
        logger.info("stream %s removed: %.1f MiB of cache freed", stream_id, freed["held_bytes"] / 2**20)
        return freed

    def budget_report(self) -> dict[str, Any]:
        """The memory budget: ``budget_mb``, ``reserved_mb``, ``free_mb``, each stream's reservation (MiB)."""
        with self.cond:
            return self.budget.describe()

    def report(self) -> dict[str, dict[str, Any]]:
        """Per stream: health counters and the last error (a failing stream is reported here)."""
        with self.cond:
            sessions = list(self._streams.items())
        keys = ("windows_ingested", "windows_failed", "windows_queued", "queries_answered", "queries_failed",
                "queries_queued", "video_dropped")
        with self.cond:
            reserved = dict(self.budget.reserved)
        out = {}
        for sid, session in sessions:
            stats = session.stats()
            used = (stats.get("kv_bytes") or 0) + (stats.get("store_bytes") or 0)
            out[sid] = {k: stats.get(k) for k in keys} | {
                "cache_reserved_mb": reserved.get(sid), "cache_used_mb": used / 2**20, "last_error": session.last_error,
            }
        return out

    async def attach(self, session: StreamSession) -> None:
        """Register ``session`` and build its engine (sink prefill) on the model thread."""
        if not self.running:
            raise QueryError("not_ready", "the model worker is not running")
        loop = asyncio.get_running_loop()
        sid = session.stream_id
        with self.cond:
            if sid in self._streams:
                raise ValueError(f"stream {sid!r} is already being served")
            self.budget.reserve(sid, session.config.cache_max_mb)  # AdmissionError: nothing registered
            self._streams[sid] = session  # reserved; scheduled once its engine exists

        def start_engine() -> None:
            engine = StreamEngine(self.adapter, session.config)
            session.config = engine.config  # resolved on the model (window_s filled)
            engine.start()
            session.engine = engine
            session.publish_stats()
            with self.cond:
                if not session.stopping and self._streams.get(sid) is session:
                    self.scheduler.add(sid)

        control = _Control(start_engine, loop, loop.create_future())
        with self.cond:
            self._controls.append(control)
            self.cond.notify_all()
        try:
            await control.future
        except BaseException:
            self.detach(session)
            raise

    def detach(self, session: StreamSession) -> list[Any]:
        """Unregister ``session`` and empty its queues (its pending questions are returned, to fail)."""
        with self.cond:
            session.stopping = True
            session.counters["windows_discarded"] += len(session.windows)
            session.windows.clear()
            pending = list(session.queries)
            session.queries.clear()
            if self._streams.get(session.stream_id) is session:
                del self._streams[session.stream_id]
                self.scheduler.remove(session.stream_id)
                self.budget.release(session.stream_id)
            self.cond.notify_all()
        return pending

    # ------------------------------------------------------------------ the model thread
    def post(self, loop: asyncio.AbstractEventLoop | None, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on ``loop`` (from the model thread); a closed loop is ignored."""
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the process is exiting (a second Ctrl-C)
            pass

    def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            self._serve(ready)
        finally:
            assert self._exited is not None
            self.post(self._loop, set_result, self._exited, None)

    def _serve(self, ready: asyncio.Future[None]) -> None:
        try:
            set_torch_threads(self.config.torch_threads)
            if self._adapter is None:
                from omnizip.adapters.loading import load_adapter

                cfg = self.config
                self._adapter = load_adapter(cfg.model, device=cfg.device, dtype=cfg.dtype, attn=cfg.attn,
                                             video_max_pixels=cfg.video_max_pixels, seed=cfg.seed)
        except BaseException as exc:  # noqa: BLE001 - reported to the awaiting coroutine
            self.post(self._loop, set_exception, ready, exc)
            return
        self.post(self._loop, set_result, ready, None)
        while True:
            with self.cond:
                job = self._next_job()
                if job is None:
                    return
            if isinstance(job, _Control):
                self._run_control(job)
                continue
            kind, members = job
            try:
                if self.on_batch is not None:
                    self.on_batch(kind, [session.stream_id for session, _ in members])
                if self.on_job is not None:
                    for session, _ in members:
                        self.on_job(session.stream_id, kind)
                serve_batch(kind, members)  # every stream's outcome is its own (failures included)
            except Exception as exc:  # a hook's failure: reported on the batch's streams, the thread goes on
                for session, _ in members:
                    session.job_failed(kind, exc)
            with self.cond:
                for session, _ in members:
                    session.job_done()

    def _next_job(self) -> _Control | tuple[str, list[tuple[StreamSession, Any]]] | None:
        """Wait for the next job, a control or a batch ``(kind, [(session, item)])`` (lock held); None: stop."""
        while True:
            if self._stopping:
                return None
            if self._controls:
                return self._controls.popleft()
            picked = self.scheduler.pick_batch(self._streams, self.max_batch)
            if picked is not None:
                kind, ids = picked
                members = []
                for sid in ids:
                    session = self._streams[sid]
                    item = (session.queries.popleft() if kind == "query"
                            else None if kind == "watch" else session.windows.popleft())
                    session.job_started(item)
                    members.append((session, item))
                return kind, members
            self.cond.wait()

    def _run_control(self, control: _Control) -> None:
        try:
            result = control.run()
        except BaseException as exc:  # noqa: BLE001 - reported to the awaiting coroutine
            self.post(control.loop, set_exception, control.future, exc)
            return
        self.post(control.loop, set_result, control.future, result)


def set_torch_threads(requested: int) -> None:
    """Apply ``StreamConfig.torch_threads`` (0 = auto: leave a core to decoding and I/O on CPU)."""
    import os

    import torch

    if requested > 0:
        torch.set_num_threads(requested)
        return
    cores = os.cpu_count() or 1
    if cores > 1 and torch.get_num_threads() >= cores:
        torch.set_num_threads(cores - 1)


def set_result(fut: asyncio.Future[Any], value: Any) -> None:
    """Resolve ``fut`` unless it is already done (cancelled)."""
    if not fut.done():
        fut.set_result(value)


def set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    """Fail ``fut`` unless it is already done (cancelled)."""
    if not fut.done():
        fut.set_exception(exc)
