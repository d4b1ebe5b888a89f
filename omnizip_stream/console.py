"""Terminal output of a running stream: the live status line, answers, the final summary.

Status goes to stderr (overwritten in place on a terminal, one line per interval otherwise); answers
and the summary go to stdout, so ``omnizip stream ... > answers.txt`` keeps only the answers.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO

from omnizip_stream.query.base import Answer


def _pct(value: float | None) -> str:
    return "  - " if value is None else f"{100 * value:3.0f}%"


def status_line(stats: dict[str, Any], source: dict[str, int] | None = None) -> str:
    """One-line summary of session counters (and the sources' counters)."""
    source = source or {}
    t1 = stats.get("last_window_t1_s", 0.0) or 0.0
    kv_mb = (stats.get("kv_bytes", 0) or 0) / 2**20
    dropped = (stats.get("video_dropped", 0) or 0) + source.get("video_dropped", 0)
    parts = [
        f"t={t1:6.1f}s",
        f"windows {stats.get('windows_ingested', 0)} (behind live {stats.get('window_lag_s', 0.0):.1f}s, "
        f"queued {stats.get('windows_queued', 0)})",
        f"kept audio {_pct(stats.get('retention_audio'))} video {_pct(stats.get('retention_video'))}",
        f"KV {stats.get('kv_tokens', 0)} tok {kv_mb:.1f} MB",
        f"evicted {stats.get('windows_evicted', 0)}",
        f"dropped video {dropped}",
    ]
    if source.get("audio_dropped_samples"):
        parts.append(f"dropped audio {source['audio_dropped_samples'] / 16000:.1f}s")
    if source.get("corrupt_packets"):
        parts.append(f"corrupt packets {source['corrupt_packets']}")
    if source.get("windows_without_video"):
        parts.append(f"windows without video {source['windows_without_video']}")
    if stats.get("windows_failed"):
        parts.append(f"failed {stats['windows_failed']}")
    return " | ".join(parts)


def printable(text: str) -> str:
    """``text`` with control characters (other than newlines) shown as escapes.

    Random-weight models emit arbitrary bytes, and a terminal must never receive raw control
    sequences from a model.
    """
    return "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in text)


class Console:
    """Thread-safe printer for status lines, answers and notes.

    Args:
        out: where answers go (stdout).
        err: where the status line and notes go (stderr).
        live_status: overwrite the status line in place (defaults to ``err.isatty()``).
    """

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, *, live_status: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.live_status = self.err.isatty() if live_status is None else live_status
        self._lock = threading.Lock()
        self._status_shown = False
        self._answering = False

    def _clear_status(self) -> None:
        if self.live_status and self._status_shown:
            self.err.write("\r\x1b[2K")
            self._status_shown = False

    def status(self, line: str) -> None:
        """Show the status line (in place on a terminal)."""
        with self._lock:
            if self._answering:
                return  # never cut an answer in half
            if self.live_status:
                self.err.write("\r\x1b[2K" + line)
                self._status_shown = True
            else:
                self.err.write(line + "\n")
            self.err.flush()

    def note(self, text: str) -> None:
        """A message for the user (stderr)."""
        with self._lock:
            self._clear_status()
            self.err.write(text + "\n")
            self.err.flush()

    def question(self, question: str, via: str = "") -> None:
        """Print the question about to be answered."""
        with self._lock:
            self._clear_status()
            self.out.write(f"Q{f' ({via})' if via else ''}: {question}\n")
            self.out.flush()

    def answer_piece(self, piece: str, first: bool) -> None:
        """Stream one piece of an answer."""
        with self._lock:
            self._clear_status()
            self._answering = True
            self.out.write(("A: " if first else "") + printable(piece))
            self.out.flush()

    def answer_done(self, answer: Answer, streamed: bool) -> None:
        """Finish an answer with its latency and the window range it could see."""
        with self._lock:
            self._clear_status()
            self._answering = False
            if not streamed:
                self.out.write(f"A: {printable(answer.text)}")
            span = ""
            if answer.time_range_s is not None and answer.window_range is not None:
                span = (f", saw windows {answer.window_range[0]}-{answer.window_range[1]} "
                        f"(t={answer.time_range_s[0]:.0f}-{answer.time_range_s[1]:.0f}s)")
            self.out.write(f"\n   [first token {answer.ttft_ms:.0f} ms, total {answer.total_ms:.0f} ms, "
                           f"{answer.tokens_generated} tokens{span}]\n")
            self.out.flush()

    def summary(self, stats: dict[str, Any], source: dict[str, int] | None = None) -> None:
        """Final counters of the run."""
        with self._lock:
            self._clear_status()
            self.out.write("summary: " + status_line(stats, source) + "\n")
            extra = {k: stats.get(k) for k in ("reanchors", "queries_answered", "queries_failed", "max_position")}
            self.out.write("         " + ", ".join(f"{k} {v}" for k, v in extra.items() if v is not None) + "\n")
            self.out.flush()
