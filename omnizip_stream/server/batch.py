"""The model thread's batch step: one batch of windows or of questions of several streams.

The :class:`~omnizip_stream.server.scheduler.Scheduler` picks the batch (at most one job per stream);
:mod:`omnizip_stream.batch` runs it with one model call per stage; each outcome goes back to its own
stream (``StreamSession.window_done`` / ``query_done``), where failures are counted per stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from omnizip_stream.batch import answer_questions, ingest_windows

if TYPE_CHECKING:
    from omnizip_stream.session import StreamSession


def serve_batch(kind: str, members: Sequence[tuple[StreamSession, Any]]) -> None:
    """Run one batch (model thread): ``kind`` ``"window"`` (PendingWindows), ``"query"`` (questions) or ``"watch"``."""
    if kind == "query":
        _serve_questions(members)
    elif kind == "watch":  # standing questions: each stream's in one forward over its own cache
        for session, _ in members:
            try:
                session.serve_watch()
            except Exception as exc:  # noqa: BLE001 - that stream's failure only
                session.job_failed(kind, exc)
    else:
        _serve_windows(members)


def _serve_windows(members: Sequence[tuple[StreamSession, Any]]) -> None:
    outcomes: list[Any]
    try:
        if len(members) == 1:  # the one-window path, engine.ingest (which tools and tests may wrap)
            session, pending = members[0]
            engine = _engine(session)
            outcomes = [_outcome(lambda p: engine.ingest(p.window, p.prepared), pending)]
        else:
            outcomes = ingest_windows([(_engine(s), pending.window) for s, pending in members],
                                      [pending.prepared for _, pending in members])
    except Exception as exc:  # noqa: BLE001 - not a stream's own failure: every member reports it
        outcomes = [exc] * len(members)
    for (session, pending), outcome in zip(members, outcomes, strict=True):
        _deliver(session, "window", session.window_done, pending, outcome)


def _serve_questions(members: Sequence[tuple[StreamSession, Any]]) -> None:
    outcomes: list[Any]
    try:
        asks = [(_engine(s), s.ask_for(query)) for s, query in members]
        if len(asks) == 1:  # the one-question path, engine.answer (which tools and tests may wrap)
            engine, ask = asks[0]
            outcomes = [_outcome(lambda a: engine.answer(a.question, a.max_new_tokens, submitted_at=a.submitted_at,
                                                         on_text=a.on_text), ask)]
        else:
            outcomes = answer_questions(asks)
    except Exception as exc:  # noqa: BLE001 - not a stream's own failure: every member reports it
        outcomes = [exc] * len(members)
    for (session, query), outcome in zip(members, outcomes, strict=True):
        _deliver(session, "query", session.query_done, query, outcome)


def _engine(session: StreamSession) -> Any:
    assert session.engine is not None
    return session.engine


def _outcome(step: Callable[[Any], Any], arg: Any) -> Any:
    try:
        return step(arg)
    except Exception as exc:  # noqa: BLE001 - the stream's outcome
        return exc


def _deliver(session: StreamSession, kind: str, done: Callable[[Any, Any], None], item: Any, outcome: Any) -> None:
    """Hand a job's outcome to its stream; whatever that raises is that stream's failure only."""
    try:
        done(item, outcome)
    except Exception as exc:  # noqa: BLE001
        session.job_failed(kind, exc)
