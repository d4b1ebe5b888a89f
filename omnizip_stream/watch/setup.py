"""Putting standing questions on a stream: from the server file / ``--watch``, and the console's alert line."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omnizip_stream.watch.log import AlertLog, default_log_dir
from omnizip_stream.watch.spec import MAX_WATCHES_PER_STREAM, WatchError, WatchSpec, watch_spec_from_mapping

logger = logging.getLogger(__name__)


def watch_specs_from_list(items: Any) -> tuple[WatchSpec, ...]:
    """The ``watches:`` list of a server-file stream entry (strings are questions with the defaults).

    Raises:
        ValueError: one line naming the entry (``watches[1]: bad watch threshold 2: ...``), or too many.
    """
    if items is None:
        return ()
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"watches must be a list of {{question: ..., threshold: ...}}, got {type(items).__name__}")
    if len(items) > MAX_WATCHES_PER_STREAM:
        raise ValueError(f"watches: {len(items)} standing questions; at most {MAX_WATCHES_PER_STREAM} per stream")
    specs = []
    for n, item in enumerate(items):
        try:
            specs.append(watch_spec_from_mapping(item))
        except WatchError as exc:
            raise ValueError(f"watches[{n}]: {exc}") from None
    return tuple(specs)


def install_watches(session: Any, specs: Sequence[WatchSpec], *, log_dir: str | Path | None = None) -> list[str]:
    """Give ``session`` its alert log and register ``specs`` (after the session started: the token check).

    A question the stream refuses (too many tokens for its question budget) is logged as one line and
    skipped; the stream keeps going.

    Returns:
        The one-line errors of the refused questions.
    """
    watches = session.watches
    if watches.log is None:
        watches.log = AlertLog(log_dir if log_dir is not None else default_log_dir(), session.stream_id)
    engine = getattr(session, "engine", None)
    errors = []
    for spec in specs:
        try:
            watches.add(spec, check_question=engine.question_ids if engine is not None else None)
        except WatchError as exc:
            errors.append(f"stream {session.stream_id!r}: watch {spec.question!r}: {exc}")
            logger.error("%s", errors[-1])
    return errors


def format_alert(alert: dict[str, Any]) -> str:
    """The console line of an alert: ``ALERT cam [w1] Is a dog barking? p=0.83 at 12.0-14.0 s``."""
    t0, t1 = alert.get("window_time_range_s") or (None, None)
    span = f" at {t0:.1f}-{t1:.1f} s" if t0 is not None and t1 is not None else ""
    line = f"ALERT {alert['stream_id']} [{alert['watch_id']}] {alert['question']} p={alert['probability']:.2f}{span}"
    if alert.get("description"):
        line += f": {alert['description']}"
    return line
