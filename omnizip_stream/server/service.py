"""StreamServer: one loaded model, many live streams, each fed from its own source with retry.

Usage::

    config = load_server_config("configs/server.yaml")
    async with StreamServer(config) as server:        # loads the model; starts every configured stream
        door = server.session("door")                 # a StreamSession: ask / ask_stream / stats
        await server.add(StreamSpec("yard", "rtsp://cam2/stream", config.defaults))
        server.describe()                             # [{id, source, state, retries, last_error, stats...}]
        await server.remove("yard")

Each stream runs ``source -> windows -> session`` in its own task (the same pipeline ``omnizip
stream`` runs for one stream): its :class:`~omnizip_stream.session.StreamSession` is registered with
the one :class:`~omnizip_stream.server.worker.ModelWorker`. A stream's state is ``starting`` (engine
and first source open), ``running``, ``retrying`` (its source failed: opening, or dying mid-run),
``ended`` (the source ended: questions are still answered about what was seen) or ``failed``
(``max_source_retries`` re-opens failed). A failing source is re-opened after a capped exponential
backoff (``retry_min_s`` doubling up to ``retry_max_s``; the backoff restarts once the source delivers
a window again); it never touches another stream.

Stream time continues across a re-open: the windows of the new connection are shifted to start
where the stream left off (for live media: where the live clock is now, so the outage is a gap in
stream time, as it was in the world), rounded up to a whole window. The cache, its positions and the
compressor state are kept: questions after a re-open see what came before it, and time ranges in
answers stay on one time line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from omnizip_stream.clock import Clock, MonotonicClock
from omnizip_stream.credentials import redact_url
from omnizip_stream.kv import CacheFullError
from omnizip_stream.runctl import first_of
from omnizip_stream.server.config import ServerConfig, StreamSpec
from omnizip_stream.server.worker import ModelWorker
from omnizip_stream.session import StreamSession
from omnizip_stream.window import Window

logger = logging.getLogger(__name__)

STATES = ("starting", "running", "retrying", "ended", "failed")
# The stats shown per stream by describe() (the full set is session.stats()).
KEY_STATS = ("windows_ingested", "windows_failed", "video_dropped", "window_lag_s", "kv_tokens", "kv_bytes",
             "queries_answered", "queries_failed", "source_ended")

# (event, info): event "added", "removed" or "state"; info the stream's describe() entry.
ChangeCallback = Callable[[str, dict[str, Any]], Any]
OpenSource = Callable[..., Any]  # (spec, *, window_s, fps, clock) -> async context manager of windows


class StreamRefusedError(ValueError):
    """A configured stream cannot be served with the loaded model (its config does not fit)."""


@contextlib.asynccontextmanager
async def open_stream_source(spec: StreamSpec, *, window_s: float, fps: float, clock: Clock) -> AsyncIterator[Any]:
    """Open ``spec``'s source as a :class:`~omnizip_stream.sources.stream.WindowStream` (its source options)."""
    from omnizip_stream.sources import open_windows

    async with open_windows(spec.source, window_s=window_s, fps=fps, mic_device=spec.mic,
                            camera_size=spec.camera_size, realtime=spec.realtime, loop=spec.loop,
                            max_side=spec.max_side, duration_s=spec.duration_s, clock=clock) as windows:
        yield windows


@dataclass
class StreamRun:
    """One stream of a :class:`StreamServer`: its session, the task feeding it, and its state."""

    spec: StreamSpec
    session: StreamSession
    state: str = "starting"
    retries: int = 0  # re-opens of the source so far
    last_error: str | None = None  # the last source failure (credentials redacted)
    error: BaseException | None = None  # the failure that ended the stream (state "failed")
    counters: Any = None  # the current source connection's StreamCounters
    task: asyncio.Task[None] | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)  # the engine start is over (either way)
    opened: asyncio.Event = field(default_factory=asyncio.Event)  # the first open was tried
    done: asyncio.Event = field(default_factory=asyncio.Event)  # the source ended or was given up
    next_t_s: float = 0.0  # stream time where the next window starts
    latest_frame: tuple[float, Any] | None = None  # (stream time s, [H, W, 3] uint8 RGB): the snapshot

    async def wait(self) -> None:
        """Wait until the source has ended (every window ingested); raises the failure that ended it."""
        await self.done.wait()
        if self.error is not None:
            raise self.error


class StreamServer:
    """One model, many streams (see the module docstring).

    Args:
        config: the model and stream defaults, the server settings and the streams started on enter.
        adapter: an already loaded adapter to serve instead of loading ``config.defaults.model``.
        clock: the clock of sources, live lag and retry waits (monotonic by default).
        open_source: ``(spec, *, window_s, fps, clock)`` -> async context manager of windows
            (default :func:`open_stream_source`; tests inject failing sources).
    """

    def __init__(self, config: ServerConfig, *, adapter: Any = None, clock: Clock | None = None,
                 open_source: OpenSource | None = None) -> None:
        self.config = config
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self._open_source = open_source or open_stream_source
        self._runs: dict[str, StreamRun] = {}
        self.on_change: list[ChangeCallback] = []
        self.worker = ModelWorker(config.defaults, adapter=adapter, clock=self.clock,
                                  kv_budget_mb=config.server.kv_budget_mb, max_batch=config.server.max_batch,
                                  prepare_threads=config.server.prepare_threads)
        self._closed = False

    @property
    def adapter(self) -> Any:
        """The shared model adapter (loaded once the server has started)."""
        return self.worker.adapter

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> StreamServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Load the model, then start every configured stream.

        Raises:
            ModelLoadError: the model cannot be loaded.
            StreamRefusedError: a configured stream does not fit the model (one line naming it).
        """
        await self.worker.start()
        try:
            for spec in self.config.streams:
                try:
                    await self.add(spec)
                except (ValueError, CacheFullError) as exc:
                    raise StreamRefusedError(f"stream {spec.id!r}: {' '.join(str(exc).split())}") from exc
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop every stream's source, close every session, then the model thread."""
        self._closed = True
        runs = list(self._runs.values())
        for run in runs:
            if run.task is not None:
                run.task.cancel()
        await asyncio.gather(*(run.task for run in runs if run.task is not None), return_exceptions=True)
        await self.worker.close()

    # ------------------------------------------------------------------ registry
    def ids(self) -> list[str]:
        """The served stream ids, in the order they were added."""
        return list(self._runs)

    def session(self, stream_id: str) -> StreamSession:
        """The :class:`StreamSession` of a stream (KeyError when there is none)."""
        return self._runs[stream_id].session

    def stream(self, stream_id: str) -> StreamRun:
        """The :class:`StreamRun` of a stream: state, retries, source counters (KeyError when none)."""
        return self._runs[stream_id]

    async def add(self, spec: StreamSpec, *, wait_open: bool = False) -> StreamSession:
        """Start serving ``spec``: register its session (sink prefill) and start feeding it.

        Args:
            spec: the stream (from the server file, or :func:`stream_spec_from_mapping`).
            wait_open: return only after the first attempt to open the source; a failure that ends
                the stream (``max_source_retries`` 0) is raised and the stream removed.

        Raises:
            ValueError: the id is already served, the spec sets another model, or the config does
                not fit the model.
            CacheFullError: the config's cache caps leave no room for a question.
            RuntimeError: the server is closed.
        """
        if self._closed or not self.worker.running:
            raise RuntimeError("the stream server is not running")
        if spec.id in self._runs:
            raise ValueError(f"stream {spec.id!r} is already being served")
        if spec.config.model != self.config.defaults.model:
            raise ValueError(f"stream {spec.id!r}: model {spec.config.model!r} differs from the server's "
                             f"{self.config.defaults.model!r} (one model serves every stream)")
        run = StreamRun(spec, StreamSession(spec.config, worker=self.worker, stream_id=spec.id))
        self._runs[spec.id] = run  # reserved while its engine starts
        try:
            await run.session.start()
        except BaseException:
            if self._runs.get(spec.id) is run:
                del self._runs[spec.id]
            raise
        finally:
            run.started.set()
        if self._runs.get(spec.id) is not run:  # removed while it was starting
            await run.session.close()
            raise ValueError(f"stream {spec.id!r} was removed while it was starting")
        # Standing questions (one the stream refuses is logged, the stream goes on) and, for every stream, its
        # alert log: watches registered later over MQTT/HTTP are logged too, and unpublished alerts re-sent.
        from omnizip_stream.watch.setup import install_watches

        install_watches(run.session, spec.watches, log_dir=self.config.server.alerts_dir)
        run.task = asyncio.create_task(self._feed(run), name=f"stream:{spec.id}")
        self._notify("added", run)
        if wait_open:
            await first_of(run.opened.wait(), run.done.wait())
            if run.done.is_set() and run.error is not None:
                await self.remove(spec.id)
                raise run.error
        return run.session

    async def remove(self, stream_id: str) -> None:
        """Stop a stream: its source is closed, pending work discarded, its memory freed.

        Raises:
            KeyError: no such stream.
        """
        run = self._runs[stream_id]
        del self._runs[stream_id]
        if run.task is None:  # still starting: its add() closes it once the engine start is over
            await run.started.wait()
        else:
            run.task.cancel()
            await asyncio.gather(run.task, return_exceptions=True)
        await run.session.close()
        run.session.engine = None  # the cache goes with it (stats() keeps its last snapshot)
        self._notify("removed", run)

    def memory(self) -> dict[str, Any]:
        """The shared KV budget: ``budget_mb`` (None: unbounded), ``reserved_mb``, ``free_mb``, per-stream MiB."""
        return self.worker.budget_report()

    def describe(self) -> list[dict[str, Any]]:
        """Per stream, in add order: id, source (credentials redacted), state, retries, last_error, key stats."""
        return [self._describe(run) for run in self._runs.values()]

    def _describe(self, run: StreamRun) -> dict[str, Any]:
        stats = run.session.stats()
        return {"id": run.spec.id, "source": redact_url(run.spec.source), "state": run.state,
                "retries": run.retries, "last_error": run.last_error, **{k: stats.get(k) for k in KEY_STATS}}

    def _notify(self, event: str, run: StreamRun) -> None:
        info = self._describe(run)
        for callback in list(self.on_change):
            try:
                callback(event, info)
            except Exception:  # a listener's bug never stops a stream
                logger.exception("stream server: on_change callback failed (%s %s)", event, run.spec.id)

    def _set_state(self, run: StreamRun, state: str) -> None:
        """Record the stream's state (also in its ``stats()``); listeners hear of changes."""
        live = run.session.live
        live.source_state, live.source_retries, live.source_error = state, run.retries, run.last_error
        if run.state != state:
            run.state = state
            logger.info("stream %s: %s", run.spec.id, state)
            self._notify("state", run)

    # ------------------------------------------------------------------ one stream's pipeline
    async def _feed(self, run: StreamRun) -> None:
        """Open the source, push its windows into the session; re-open after failures (see module docstring)."""
        spec, session, settings = run.spec, run.session, self.config.server
        window_s = session.config.window_s  # resolved on the model when the session started (for_model)
        assert window_s is not None
        fps = float(self.adapter.spec.fps)
        failures = 0  # in a row: the backoff restarts once a window arrives
        t0_clock: float | None = None  # clock reading at stream time 0 (the first successful open)
        live = False
        try:
            while True:
                offset_s = 0.0
                if t0_clock is not None:
                    behind_s = self.clock.now() - t0_clock if live else 0.0
                    offset_s = _whole_windows(max(run.next_t_s, behind_s), window_s)
                try:
                    async with self._open_source(spec, window_s=window_s, fps=fps, clock=self.clock) as windows:
                        live = bool(getattr(windows, "live", False))
                        if t0_clock is None:
                            t0_clock = self.clock.now() - float(windows.session_time()) if live else 0.0
                        run.counters = windows.counters
                        session.attach_source(windows.counters,
                                              live_clock=_shifted_clock(windows, offset_s) if live else None)
                        self._set_state(run, "running")
                        run.opened.set()
                        async for window in windows:
                            if window.num_frames:
                                run.latest_frame = (float(window.frame_pts_s[-1]) + offset_s, window.frames[-1])
                            await session.push_window(_shifted(window, offset_s))
                            run.next_t_s = window.t1_s + offset_s
                            failures = 0
                        await windows.aclose()  # what the sources would produce now is neither used nor "dropped"
                    await session.drain()
                    session.end_of_source()
                    self._set_state(run, "ended")
                    return
                except Exception as exc:
                    if session.stopping:
                        return  # removed or closing
                    run.last_error = _error_line(exc, spec.source)
                    if settings.max_source_retries is not None and run.retries >= settings.max_source_retries:
                        run.error = exc
                        self._set_state(run, "failed")
                        if settings.max_source_retries:
                            logger.error("stream %s: source gave up after %d retries: %s", spec.id, run.retries,
                                         run.last_error)
                        return
                    failures += 1
                    run.retries += 1
                    delay_s = min(settings.retry_max_s, settings.retry_min_s * 2 ** (failures - 1))
                    self._set_state(run, "retrying")
                    logger.warning("stream %s: source failed (%s); retry %d in %.1f s", spec.id, run.last_error,
                                   run.retries, delay_s)
                    run.opened.set()
                    await self.clock.asleep(delay_s)
        finally:
            run.opened.set()
            run.done.set()


def _whole_windows(t_s: float, window_s: float) -> float:
    """``t_s`` rounded up to a whole number of windows (chunks stay on the model's grid)."""
    return math.ceil(t_s / window_s - 1e-9) * window_s


def _shifted(window: Window, offset_s: float) -> Window:
    """``window`` moved ``offset_s`` later in stream time."""
    if not offset_s:
        return window
    return dataclasses.replace(window, t0_s=window.t0_s + offset_s, frame_pts_s=window.frame_pts_s + offset_s)


def _shifted_clock(windows: Any, offset_s: float) -> Callable[[], float]:
    return lambda: offset_s + float(windows.session_time())


def _error_line(exc: BaseException, source: str) -> str:
    """One line for the report: the exception, with the source's credentials redacted."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    shown = redact_url(source)
    if shown != source:
        text = text.replace(source, shown)
    return f"{type(exc).__name__}: {text}" if not text.startswith(type(exc).__name__) else text


__all__ = ["KEY_STATS", "STATES", "StreamRefusedError", "StreamRun", "StreamServer", "open_stream_source"]
