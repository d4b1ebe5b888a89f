"""The terminal of a running stream: the live status line, answers, the summary, typed questions.

Status goes to stderr, answers and the summary to stdout, so ``omnizip stream ... > answers.txt``
keeps only the answers. On a terminal the status line lives on the bottom row, kept out of the
scrolling region (as ``apt`` does): answers, log lines and what the user types scroll above it and
never glue onto it. Elsewhere (a pipe, a file, ``TERM=dumb``) it is one line per change.

Typed lines are read with :func:`read_lines`, on the event loop (no thread blocked in ``readline``),
so Ctrl-C never waits for Enter.

The status line is built from :meth:`StreamSession.stats() <omnizip_stream.session.StreamSession.stats>`
alone: the same numbers the MQTT status topic publishes.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import os
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any, TextIO

from omnizip_stream.query.base import Answer

_SAVE, _RESTORE, _CLEAR_LINE = "\x1b7", "\x1b8", "\x1b[2K"


def _pct(value: float | None) -> str:
    return "  - " if value is None else f"{100 * value:3.0f}%"


def status_line(stats: dict[str, Any]) -> str:
    """One-line summary of a session's ``stats()`` (the sources' counters are under ``source``)."""
    source = stats.get("source") or {}
    t1 = stats.get("last_window_t1_s", 0.0) or 0.0
    kv_mb = (stats.get("kv_bytes", 0) or 0) / 2**20
    dropped = stats.get("video_dropped", 0) or 0  # the stream's one drop counter (``source`` holds the same)
    if stats.get("source_ended"):
        live = "source ended"
    else:
        lag = stats.get("window_lag_s")
        live = "behind live " + ("-" if lag is None else f"{lag:.1f}s")
    parts = [
        f"t={t1:6.1f}s",
        f"windows {stats.get('windows_ingested', 0)} ({live}, queued {stats.get('windows_queued', 0)})",
        f"kept audio {_pct(stats.get('retention_audio'))} video {_pct(stats.get('retention_video'))}",
        f"KV {stats.get('kv_tokens', 0)} tok {kv_mb:.1f} MB",
        f"evicted {stats.get('windows_evicted', 0)}",
        f"dropped video {dropped}",
    ]
    audio_dropped = stats.get("audio_dropped_samples", 0) or 0
    if audio_dropped:
        parts.append(f"dropped audio {audio_dropped / 16000:.1f}s")
    if source.get("corrupt_packets"):
        parts.append(f"corrupt packets {source['corrupt_packets']}")
    if source.get("windows_without_video"):
        parts.append(f"windows without video {source['windows_without_video']}")
    if stats.get("windows_failed"):
        parts.append(f"failed {stats['windows_failed']}")
    return " | ".join(parts)


def seen_windows(answer: Answer) -> str:
    """What an answer could see, e.g. ``windows 0-0 (sink, t=0-2s) and 91-100 (t=182-202s), 90 evicted``."""
    if answer.window_range is None or answer.time_range_s is None:
        return ""

    def span(window_range: tuple[int, int], time_range_s: tuple[float, float], label: str = "") -> str:
        return (f"{window_range[0]}-{window_range[1]} "
                f"({label}t={time_range_s[0]:.0f}-{time_range_s[1]:.0f}s)")

    if answer.has_gap and answer.sink_time_range_s is not None and answer.recent_time_range_s is not None:
        assert answer.sink_window_range is not None and answer.recent_window_range is not None
        text = (f"windows {span(answer.sink_window_range, answer.sink_time_range_s, 'sink, ')} and "
                f"{span(answer.recent_window_range, answer.recent_time_range_s)}")
    else:
        text = f"windows {span(answer.window_range, answer.time_range_s)}"
    if answer.windows_evicted:
        text += f", {answer.windows_evicted} evicted"
    return text


def printable(text: str) -> str:
    """``text`` with control characters (other than newlines) shown as escapes.

    Random-weight models emit arbitrary bytes, and a terminal must never receive raw control
    sequences from a model.
    """
    return "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in text)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


class Console:
    """Thread-safe printer for status lines, answers and notes.

    Args:
        out: where answers go (stdout).
        err: where the status line and notes go (stderr).
        live_status: keep the status line on the terminal's bottom row (defaults to whether ``err`` is
            a terminal); otherwise print it as a line whenever it changes.
    """

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, *, live_status: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.live_status = _is_terminal(self.err) if live_status is None else live_status
        self._lock = threading.Lock()
        self._answering = False
        self._bar_rows: int | None = None  # terminal rows when the bottom row is reserved for the status
        self._atexit = False

    # ------------------------------------------------------------------ the status bar
    def _terminal_size(self) -> tuple[int, int] | None:
        try:
            size = os.get_terminal_size(self.err.fileno())
        except (AttributeError, OSError, ValueError):
            return None
        return (size.lines, size.columns) if size.lines >= 3 and size.columns >= 10 else None

    def _bar(self, line: str, size: tuple[int, int]) -> str:
        """Escape sequence drawing ``line`` on the bottom row (reserving it first), cursor left in place."""
        rows, cols = size
        seq = ""
        if self._bar_rows != rows:  # first time, or the terminal was resized
            # Make sure the cursor is above the bottom row, then let only the rows above it scroll.
            seq += f"\n\x1b[1A{_SAVE}\x1b[1;{rows - 1}r{_RESTORE}"
            self._bar_rows = rows
            if not self._atexit:
                atexit.register(self.close)
                self._atexit = True
        return seq + f"{_SAVE}\x1b[{rows};1H{_CLEAR_LINE}{line[: cols - 1]}{_RESTORE}"

    def close(self) -> None:
        """Give the bottom row back to the terminal (the whole screen scrolls again). Idempotent."""
        with self._lock:
            self._release()

    def _release(self) -> None:
        if self._bar_rows is None:
            return
        rows, self._bar_rows = self._bar_rows, None
        try:
            self.err.write(f"{_SAVE}\x1b[r\x1b[{rows};1H{_CLEAR_LINE}{_RESTORE}")
            self.err.flush()
        except (OSError, ValueError):  # the terminal is gone
            pass

    # ------------------------------------------------------------------ output
    def status(self, line: str) -> None:
        """Show the status line (on the bottom row of a terminal, else as a line)."""
        with self._lock:
            size = self._terminal_size() if self.live_status else None
            if size is not None:
                self.err.write(self._bar(line, size))
            else:
                if self._answering:
                    return  # never cut an answer in half
                self.err.write(line + "\n")
            self.err.flush()

    def note(self, text: str) -> None:
        """A message for the user (stderr)."""
        with self._lock:
            if self._answering:  # an answer broke off: end its line first
                self._answering = False
                self.out.write("\n")
                self.out.flush()
            self.err.write(text + "\n")
            self.err.flush()

    def question(self, question: str, via: str = "") -> None:
        """Print the question about to be answered."""
        with self._lock:
            self.out.write(f"Q{f' ({via})' if via else ''}: {printable(question)}\n")
            self.out.flush()

    def answer_piece(self, piece: str, first: bool) -> None:
        """Stream one piece of an answer."""
        with self._lock:
            self._answering = True
            self.out.write(("A: " if first else "") + printable(piece))
            self.out.flush()

    def answer_done(self, answer: Answer, streamed: bool) -> None:
        """Finish an answer with its latency and the windows it could see."""
        with self._lock:
            self._answering = False
            if not streamed:
                self.out.write(f"A: {printable(answer.text)}")
            seen = seen_windows(answer)
            self.out.write(f"\n   [first token {answer.ttft_ms:.0f} ms, total {answer.total_ms:.0f} ms, "
                           f"{answer.tokens_generated} tokens{', saw ' + seen if seen else ''}]\n")
            self.out.flush()

    def summary(self, stats: dict[str, Any]) -> None:
        """Final counters of the run (the status bar is released first)."""
        with self._lock:
            self._release()
            self.out.write("summary: " + status_line(stats) + "\n")
            extra = {k: stats.get(k) for k in ("reanchors", "queries_answered", "queries_failed", "max_position")}
            self.out.write("         " + ", ".join(f"{k} {v}" for k, v in extra.items() if v is not None) + "\n")
            self.out.flush()


async def read_lines(stream: TextIO | None = None) -> AsyncIterator[str]:
    """Lines of ``stream`` (stdin) as they are typed, without their newline; ends at end of input.

    A terminal or a pipe is watched by the event loop (``loop.add_reader``), so cancelling the
    iteration (Ctrl-C) is immediate and no thread is left blocked in ``readline``. A regular file
    (``< questions.txt``), which cannot be watched, is read in a worker thread (it never blocks).
    """
    stream = stream if stream is not None else sys.stdin
    loop = asyncio.get_running_loop()
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    decoder = codecs.getincrementaldecoder(getattr(stream, "encoding", None) or "utf-8")(errors="replace")
    pending = [""]

    def on_readable() -> None:
        try:
            data = os.read(fd, 65536)  # readable: returns at once (a whole line on a terminal)
        except OSError:
            data = b""
        text = pending[0] + decoder.decode(data, final=not data)
        *lines, pending[0] = text.split("\n")
        for line in lines:
            queue.put_nowait(line.rstrip("\r"))
        if not data:
            loop.remove_reader(fd)
            if pending[0]:
                queue.put_nowait(pending[0])
            queue.put_nowait(None)

    watched = False
    if fd >= 0:
        try:
            loop.add_reader(fd, on_readable)
            watched = True
        except (OSError, ValueError, NotImplementedError):  # a regular file, or no selector support
            watched = False
    try:
        while True:
            if watched:
                line = await queue.get()
            else:
                raw = await asyncio.to_thread(stream.readline)
                line = raw.rstrip("\r\n") if raw else None
            if line is None:
                return
            yield line
    finally:
        if watched:
            loop.remove_reader(fd)
