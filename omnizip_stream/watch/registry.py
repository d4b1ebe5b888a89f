"""A stream's standing questions: registration, when they are due, their one batched evaluation, alerts.

:class:`StreamWatches` is owned by a :class:`~omnizip_stream.session.StreamSession` (its ``watches``).
The model thread calls :meth:`StreamWatches.window_done` after each ingested window (which marks the
due questions) and, when the worker's scheduler picks the stream's ``"watch"`` job, :meth:`StreamWatches.run`:

* **Scheduling.** The scheduler runs users' questions first, then due standing questions, then
  windows: standing questions run after the window they follow and before that stream's next window,
  and yield to users' questions. When the stream has pending windows after a window (the server is
  behind), the period stretches: questions wait ``every_windows * stretch`` windows, the stretch
  doubling after each evaluation made while behind (up to :data:`MAX_STRETCH`) and back to 1 once
  caught up; each deferred evaluation is counted (``watch_deferred``). Windows are never dropped for standing questions.
* **Evaluation.** All due questions of the stream run in one forward over its cache
  (:func:`~omnizip_stream.watch.evaluate.evaluate_yes_no`); the cache is left as it was.
* **Alerts.** A question that fires (:meth:`~omnizip_stream.watch.spec.WatchState.observe`) gets an
  optional description (the engine's answer path, at most ``DESCRIBE_MAX_TOKENS`` tokens), is appended to
  the stream's :class:`~omnizip_stream.watch.log.AlertLog` and only then handed to the listeners
  (the MQTT publisher, the console) on the event loop.
"""

from __future__ import annotations

import builtins
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from omnizip_stream.watch.evaluate import YesNoTokens, evaluate_yes_no
from omnizip_stream.watch.log import AlertLog
from omnizip_stream.watch.spec import (
    DESCRIBE_MAX_TOKENS,
    DESCRIBE_QUESTION,
    MAX_WATCHES_PER_STREAM,
    WatchError,
    WatchSpec,
    WatchState,
)

logger = logging.getLogger(__name__)

MAX_STRETCH = 16
"""Largest factor a falling-behind server stretches the evaluation period by."""


class StreamWatches:
    """The standing questions of one stream (see the module docstring).

    Args:
        stream_id: the stream's id (in every alert).
        log: the stream's alert log (None: alerts are not persisted; tests and ``--watch`` without one).
        max_watches: registrations allowed on the stream.
        wall_clock: seconds since the epoch (the alert's ``ts``).
    """

    def __init__(self, stream_id: str, *, log: AlertLog | None = None, max_watches: int = MAX_WATCHES_PER_STREAM,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.stream_id = stream_id
        self.log = log
        self.max_watches = max_watches
        self.wall_clock = wall_clock
        self._lock = threading.Lock()  # registrations come from the event loop, evaluations from the model thread
        self._watches: dict[str, WatchState] = {}
        self._ids = itertools.count(1)
        self._tokens: YesNoTokens | None = None
        self._question_ids: dict[str, list[int]] = {}  # question text -> its token ids (rendered once)
        self.due: list[str] = []  # ids to evaluate in the next "watch" job (read by the scheduler)
        self.stretch = 1
        self.listeners: list[Callable[[dict[str, Any]], None]] = []  # called on the event loop with each alert
        self.counters = {"watch_evaluations": 0, "watch_forwards": 0, "watch_deferred": 0, "watch_alerts": 0,
                         "watch_describe_failed": 0, "watch_failed": 0}
        self.last_eval_ms: float | None = None
        self._window: dict[str, Any] | None = None  # the last ingested window (index, time range, landed_at)

    # ------------------------------------------------------------------ registration (any thread)
    def add(self, spec: WatchSpec, check_question: Callable[[str], Any] | None = None) -> WatchState:
        """Register ``spec`` (id assigned if it has none).

        Args:
            spec: a validated spec (:func:`~omnizip_stream.watch.spec.watch_spec_from_mapping`).
            check_question: raises ``QueryError(too_long)`` when the question does not fit the
                stream's question budget (``StreamEngine.question_ids``).

        Raises:
            WatchError: ``too_many``, ``conflict`` (id in use) or ``too_long``.
        """
        if check_question is not None:
            from omnizip_stream.query.base import QueryError
            from omnizip_stream.watch.evaluate import yes_no_text

            try:
                check_question(yes_no_text(spec.question))
            except QueryError as exc:
                raise WatchError("too_long" if exc.code == "too_long" else "bad_request",
                                 f"watch question refused: {exc.message}") from None
        with self._lock:
            if len(self._watches) >= self.max_watches:
                raise WatchError("too_many", f"stream {self.stream_id!r} has {len(self._watches)} watches; "
                                             f"at most {self.max_watches}")
            wid = spec.id
            if wid is None:
                wid = next(i for i in (f"w{n}" for n in self._ids) if i not in self._watches)
            elif wid in self._watches:
                raise WatchError("conflict", f"stream {self.stream_id!r} already has a watch {wid!r}")
            state = WatchState(WatchSpec(**(spec.to_dict() | {"id": wid})))
            self._watches[wid] = state
        logger.info("stream %s: watch %s added: %r", self.stream_id, wid, spec.question)
        return state

    def remove(self, watch_id: str) -> None:
        """Unregister a watch (KeyError if the stream has none of that id)."""
        with self._lock:
            del self._watches[watch_id]
            self.due = [w for w in self.due if w != watch_id]

    def list(self) -> list[dict[str, Any]]:
        """Every watch's settings and state, in registration order."""
        with self._lock:
            return [w.describe() for w in self._watches.values()]

    def __len__(self) -> int:
        return len(self._watches)

    def stats(self) -> dict[str, Any]:
        """Counters for the stream's stats (``watches``, ``watch_*``, ``watch_stretch``)."""
        return {"watches": len(self._watches), **self.counters, "watch_stretch": self.stretch,
                "watch_last_eval_ms": self.last_eval_ms}

    # ------------------------------------------------------------------ model thread
    def window_done(self, report: Any, *, backlog: int, landed_at: float) -> None:
        """After window ``report`` was ingested: mark the questions whose (stretched) period has come.

        Args:
            report: the window's :class:`~omnizip_stream.engine.WindowReport`.
            backlog: windows of this stream still pending (> 0: the server is behind on it).
            landed_at: ``time.time()`` when it landed (alert latency is measured from here).
        """
        with self._lock:
            self._window = {"index": report.index, "t0_s": report.t0_s, "t1_s": report.t1_s, "landed_at": landed_at}
            if backlog <= 0:
                self.stretch = 1
            due = []
            for wid, state in self._watches.items():
                state.windows_since_eval += 1
                if state.windows_since_eval >= state.spec.every_windows * self.stretch:
                    due.append(wid)
                elif state.windows_since_eval >= state.spec.every_windows:
                    self.counters["watch_deferred"] += 1
            if due and backlog > 0:  # evaluated while behind: the next period is twice as long
                self.stretch = min(self.stretch * 2, MAX_STRETCH)
            self.due = due

    def run(self, engine: Any) -> builtins.list[dict[str, Any]]:  # builtins: the method list shadows it here
        """Evaluate the due questions in one forward; returns the alerts (already in the log).

        The alerts still have to be handed to :attr:`listeners` on the event loop (:meth:`deliver`).
        """
        with self._lock:
            due = [self._watches[w] for w in self.due if w in self._watches]
            self.due = []
            window = dict(self._window or {})
        if not due:
            return []
        if self._tokens is None:
            self._tokens = YesNoTokens.from_tokenizer(engine.adapter.tokenizer)
        t0 = time.perf_counter()
        probabilities = evaluate_yes_no(engine, [w.spec.question for w in due], self._tokens, ids_cache=self._question_ids)
        self.last_eval_ms = (time.perf_counter() - t0) * 1e3
        self.counters["watch_forwards"] += 1
        self.counters["watch_evaluations"] += len(due)
        t_s = float(window.get("t1_s", 0.0))
        fired = []
        with self._lock:
            for state, p in zip(due, probabilities, strict=True):
                state.windows_since_eval = 0
                if state.observe(p, t_s):
                    fired.append((state, p))
        alerts = [self._alert(engine, state, p, window) for state, p in fired]
        self.counters["watch_alerts"] += len(alerts)
        return alerts

    def _alert(self, engine: Any, state: WatchState, probability: float, window: dict[str, Any]) -> dict[str, Any]:
        spans = engine.cached_spans()
        description = None
        if state.spec.describe:
            try:
                result = engine.answer(DESCRIBE_QUESTION, min(DESCRIBE_MAX_TOKENS, engine.config.max_new_tokens))
                description = result.text
            except Exception as exc:  # noqa: BLE001 - the alert goes out without its description
                self.counters["watch_describe_failed"] += 1
                logger.warning("stream %s: describing watch %s failed: %s", self.stream_id, state.spec.id, exc)
        now = self.wall_clock()
        alert = {
            "type": "alert", "stream_id": self.stream_id, "watch_id": state.spec.id, "question": state.spec.question,
            "mode": state.spec.mode, "probability": probability, "threshold": state.spec.threshold,
            "debounce": state.spec.debounce, "window": window.get("index"),
            "window_time_range_s": [window.get("t0_s"), window.get("t1_s")],
            "time_range_s": list(spans["time_range_s"]) if spans.get("time_range_s") else None,
            "window_range": list(spans["window_range"]) if spans.get("window_range") else None,
            "ts": now, "window_landed_ts": window.get("landed_at"), "description": description,
        }
        if self.log is not None:
            self.log.append(alert)  # on disk before anyone publishes it
        return alert

    # ------------------------------------------------------------------ event loop
    def deliver(self, alert: dict[str, Any]) -> None:
        """Hand one alert to every listener (event loop); a failing listener is logged, the others still run."""
        for listener in list(self.listeners):
            try:
                listener(alert)
            except Exception:  # noqa: BLE001
                logger.exception("stream %s: an alert listener failed", self.stream_id)
