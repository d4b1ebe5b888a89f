"""What a standing question is (its settings and their limits) and the alert it produces.

A standing question ("tell me when a dog barks") is registered once per stream, from the server
file (``watches: [{question: "...", threshold: 0.5, debounce: 2, cooldown_s: 30, every_windows: 1}]``),
over MQTT (``omnizip/<id>/watch``) or with ``omnizip stream --watch``. Every registration goes through
:func:`watch_spec_from_mapping`, so the three give the same one-line errors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MODES = ("yes_no",)
MAX_WATCHES_PER_STREAM = 16
MAX_QUESTION_CHARS = 300
DESCRIBE_QUESTION = "What happened just now? Answer in one short sentence."
DESCRIBE_MAX_TOKENS = 32
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
KEYS = ("id", "question", "mode", "threshold", "debounce", "cooldown_s", "every_windows", "describe")


class WatchError(ValueError):
    """A registration the stream refuses; ``code`` is ``bad_request``, ``too_many``, ``too_long`` or ``conflict``.

    The message is one line, meant for the user (the stream keeps going).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class WatchSpec:
    """A standing question's settings.

    Attributes:
        question: the condition, asked as a yes/no question.
        id: the question's id in its stream (None: assigned on registration, ``w1``, ``w2``...).
        mode: ``yes_no`` (P(yes) of the first answer token).
        threshold: P(yes) at or above which an evaluation is positive (0: every evaluation is).
        debounce: consecutive positive evaluations that fire an alert.
        cooldown_s: stream seconds after an alert during which the question does not fire again.
        every_windows: evaluate after every n-th window (stretched when the server falls behind).
        describe: add a short generated description ("what happened?") to each alert.
    """

    question: str
    id: str | None = None
    mode: str = "yes_no"
    threshold: float = 0.5
    debounce: int = 1
    cooldown_s: float = 0.0
    every_windows: int = 1
    describe: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The settings as the server file / MQTT spell them."""
        return {key: getattr(self, key) for key in KEYS}


def _number(item: Mapping[str, Any], key: str, default: float, *, lo: float, hi: float | None,
            integer: bool = False) -> Any:
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WatchError("bad_request", f"watch {key} must be a number, not {value!r}")
    if integer and value != int(value):
        raise WatchError("bad_request", f"watch {key} must be a whole number, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        span = f"between {lo:g} and {hi:g}" if hi is not None else f"at least {lo:g}"
        raise WatchError("bad_request", f"bad watch {key} {value!r}: must be {span}")
    return int(value) if integer else float(value)


def watch_spec_from_mapping(item: Any) -> WatchSpec:
    """Validate one registration (a server-file entry or an MQTT ``watch`` object).

    Raises:
        WatchError: unknown key, empty or too long question, bad threshold / debounce / cooldown /
            period, unknown mode, bad id (one line each).
    """
    if isinstance(item, str):
        item = {"question": item}
    if not isinstance(item, Mapping):
        raise WatchError("bad_request", f"a watch must be a mapping with a question, not {type(item).__name__}")
    unknown = sorted(set(item) - set(KEYS))
    if unknown:
        raise WatchError("bad_request", f"unknown watch key {unknown[0]!r} (known: {', '.join(KEYS)})")
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        raise WatchError("bad_request", "a watch needs a non-empty question")
    question = " ".join(question.split())
    if len(question) > MAX_QUESTION_CHARS:
        raise WatchError("too_long", f"the watch question is {len(question)} characters; at most {MAX_QUESTION_CHARS}")
    mode = item.get("mode", "yes_no")
    if mode not in MODES:
        raise WatchError("bad_request", f"unknown watch mode {mode!r} (known: {', '.join(MODES)})")
    wid = item.get("id")
    if wid is not None and (not isinstance(wid, str) or not _ID_RE.match(wid)):
        raise WatchError("bad_request", f"bad watch id {wid!r}: 1-64 of letters, digits, '_', '-', '.'")
    describe = item.get("describe", False)
    if not isinstance(describe, bool):
        raise WatchError("bad_request", f"watch describe must be true or false, not {describe!r}")
    return WatchSpec(
        question=question, id=wid, mode=mode,
        threshold=_number(item, "threshold", 0.5, lo=0.0, hi=1.0),
        debounce=_number(item, "debounce", 1, lo=1, hi=1000, integer=True),
        cooldown_s=_number(item, "cooldown_s", 0.0, lo=0.0, hi=None),
        every_windows=_number(item, "every_windows", 1, lo=1, hi=10000, integer=True),
        describe=describe,
    )


@dataclass
class WatchState:
    """The debounce / cooldown state of one registered standing question.

    Attributes:
        spec: its settings (``spec.id`` is set).
        consecutive: positive evaluations in a row so far.
        last_fired_s: stream time (end of the window) of its last alert, or None.
        windows_since_eval: windows ingested since its last evaluation.
        evaluations / positives / alerts: counters.
        last_probability: P(yes) of the last evaluation.
    """

    spec: WatchSpec
    consecutive: int = 0
    last_fired_s: float | None = None
    windows_since_eval: int = 0
    evaluations: int = 0
    positives: int = 0
    alerts: int = 0
    last_probability: float | None = None

    def observe(self, probability: float, t_s: float) -> bool:
        """Record one evaluation at stream time ``t_s``; True when it fires an alert.

        Positive when ``probability >= threshold``; fires at the ``debounce``-th positive in a row
        unless the last alert was less than ``cooldown_s`` stream seconds ago (the run keeps
        counting, so it fires at the first evaluation after the cooldown); firing restarts the run.
        """
        self.evaluations += 1
        self.last_probability = probability
        if probability >= self.spec.threshold:
            self.positives += 1
            self.consecutive += 1
        else:
            self.consecutive = 0
        if self.consecutive < self.spec.debounce:
            return False
        if self.last_fired_s is not None and t_s - self.last_fired_s < self.spec.cooldown_s - 1e-9:
            return False
        self.consecutive = 0
        self.last_fired_s = t_s
        self.alerts += 1
        return True

    def describe(self) -> dict[str, Any]:
        """The listing entry: settings plus state."""
        return self.spec.to_dict() | {
            "evaluations": self.evaluations, "positives": self.positives, "alerts": self.alerts,
            "consecutive": self.consecutive, "last_probability": self.last_probability,
        }
