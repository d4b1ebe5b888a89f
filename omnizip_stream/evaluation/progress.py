"""A small progress line with rate and ETA (no dependency): rewritten in place on a terminal, else periodic lines."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1:02:05``; ``65`` -> ``1:05``."""
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts finished units (item x setting) and prints ``done/total pct | rate | ETA | note``.

    Units skipped because a previous run finished them count as done but not in the rate, so the
    ETA reflects the work left at this run's speed.

    Args:
        total: units in the sweep.
        stream: where to print (stderr by default).
        label: prefix of the line.
        min_interval_s: shortest time between two prints (the last one always prints).
        clock: time source (for tests).
    """

    def __init__(self, total: int, *, stream: TextIO | None = None, label: str = "eval",
                 min_interval_s: float | None = None, clock: object = time.monotonic) -> None:
        self.total = max(0, total)
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval_s = min_interval_s if min_interval_s is not None else (0.2 if self.tty else 30.0)
        self._clock = clock
        self.start = self._now()
        self.done = 0
        self.skipped = 0
        self.errors = 0
        self._last_print = float("-inf")

    def _now(self) -> float:
        return float(self._clock())  # type: ignore[operator]

    def skip(self, n: int) -> None:
        """``n`` units were already finished by a previous run."""
        self.done += n
        self.skipped += n
        self._maybe_print("resumed")

    def advance(self, note: str = "", *, error: bool = False) -> None:
        """One unit finished now (``error`` when it was recorded as an error)."""
        self.done += 1
        self.errors += int(error)
        self._maybe_print(note)

    def eta_s(self) -> float | None:
        """Seconds left at this run's rate, or None before the first unit of this run."""
        worked = self.done - self.skipped
        if worked <= 0:
            return None
        elapsed = self._now() - self.start
        return elapsed / worked * (self.total - self.done)

    def line(self, note: str = "") -> str:
        """The current progress line."""
        pct = 100.0 * self.done / self.total if self.total else 100.0
        elapsed = self._now() - self.start
        worked = self.done - self.skipped
        rate = f"{worked / elapsed:.2f}/s" if worked > 0 and elapsed > 0 else "-/s"
        eta = self.eta_s()
        parts = [f"[{self.label}] {self.done}/{self.total} {pct:3.0f}%", rate,
                 f"ETA {format_duration(eta) if eta is not None else '?'}", f"elapsed {format_duration(elapsed)}"]
        if self.errors:
            parts.append(f"{self.errors} errors")
        if note:
            parts.append(note)
        return " | ".join(parts)

    def _maybe_print(self, note: str) -> None:
        now = self._now()
        if self.done < self.total and now - self._last_print < self.min_interval_s:
            return
        self._last_print = now
        text = self.line(note)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text[:200])
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Finish the line on a terminal."""
        if self.tty and self.done < self.total:
            self.stream.write("\n")
            self.stream.flush()
