"""The terminal of a stream: the status line on the bottom row, one status model, what answers saw."""

from __future__ import annotations

import io
import re

from omnizip_stream.console import Console, seen_windows, status_line
from omnizip_stream.query.base import Answer


class Screen:
    """The subset of a VT100 that the console uses: text, CR/LF, ESC 7/8, CSI r / H / K / A."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.cells = [[" "] * cols for _ in range(rows)]
        self.row = self.col = 0
        self.top, self.bottom = 0, rows - 1
        self.saved = (0, 0)

    def lines(self) -> list[str]:
        return ["".join(r).rstrip() for r in self.cells]

    def _linefeed(self) -> None:
        if self.row == self.bottom:
            del self.cells[self.top]
            self.cells.insert(self.bottom, [" "] * self.cols)
        elif self.row < self.rows - 1:
            self.row += 1

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":
                if text[i + 1] == "7":
                    self.saved = (self.row, self.col)
                    i += 2
                    continue
                if text[i + 1] == "8":
                    self.row, self.col = self.saved
                    i += 2
                    continue
                m = re.match(r"\x1b\[([0-9;]*)([A-Za-z])", text[i:])
                assert m, repr(text[i:i + 10])
                args = [int(a) for a in m.group(1).split(";") if a]
                cmd = m.group(2)
                if cmd == "r":
                    self.top, self.bottom = (args[0] - 1, args[1] - 1) if args else (0, self.rows - 1)
                    self.row = self.col = 0
                elif cmd == "H":
                    self.row, self.col = (args[0] - 1, args[1] - 1) if args else (0, 0)
                elif cmd == "K":
                    self.cells[self.row] = [" "] * self.cols
                elif cmd == "A":
                    self.row = max(self.top if self.row >= self.top else 0, self.row - (args[0] if args else 1))
                i += m.end()
                continue
            if ch == "\r":
                self.col = 0
            elif ch == "\n":  # the terminal's onlcr: CR LF
                self.col = 0
                self._linefeed()
            else:
                if self.col >= self.cols:
                    self.col = 0
                    self._linefeed()
                self.cells[self.row][self.col] = ch
                self.col += 1
            i += 1


class TerminalStream(io.StringIO):
    """stdout/stderr of a terminal: what is written lands on ``screen``."""

    def __init__(self, screen: Screen) -> None:
        super().__init__()
        self.screen = screen

    def write(self, text: str) -> int:
        self.screen.feed(text)
        return len(text)

    def isatty(self) -> bool:
        return True


def _console(screen: Screen) -> Console:
    console = Console(TerminalStream(screen), TerminalStream(screen), live_status=True)
    console._terminal_size = lambda: (screen.rows, screen.cols)  # type: ignore[method-assign]
    return console


def test_status_stays_on_the_bottom_row_while_logs_answers_and_typing_scroll_above():
    screen = Screen(8, 60)
    console = _console(screen)
    for i in range(12):  # a full screen of earlier output
        console.note(f"earlier line {i}")
    console.status("STATUS one")
    screen.feed("what is mov")  # the terminal echoes what the user types, at the cursor
    console.err.write("2026-01-01 WARNING a log line\n")  # logging writes to stderr directly
    console.status("STATUS two")
    screen.feed("ing?\n")
    console.question("what is moving?")
    console.answer_piece("a square", True)
    console.status("STATUS three")  # mid-answer: drawn on its own row, the answer is not cut
    console.answer_piece(" moves", False)
    console.answer_done(Answer("a square moves", 3.0, 9.0, (0, 1), (0.0, 4.0), 2), streamed=True)
    lines = screen.lines()
    assert lines[-1] == "STATUS three"
    assert [line for line in lines if "STATUS" in line] == ["STATUS three"]
    assert "A: a square moves" in lines
    assert any("WARNING a log line" in line for line in lines)  # (after the echo of the typed text)
    assert any(line.startswith("Q: what is moving?") for line in lines)
    console.summary({"windows_ingested": 2})
    assert (screen.top, screen.bottom) == (0, screen.rows - 1)  # the whole screen scrolls again
    assert not any("STATUS" in line for line in screen.lines())
    assert any(line.startswith("summary: ") for line in screen.lines())


def test_without_a_terminal_status_is_one_line_per_call_and_never_cuts_an_answer():
    out, err = io.StringIO(), io.StringIO()
    console = Console(out, err, live_status=False)
    console.status("s1")
    console.answer_piece("half", True)
    console.status("s2")  # skipped: it would land in the middle of the answer in a shared log
    console.answer_done(Answer("half", 1.0, 2.0, None, None, 1), streamed=True)
    assert err.getvalue() == "s1\n" and "\x1b" not in err.getvalue() + out.getvalue()


def test_status_line_is_built_from_session_stats_alone():
    stats = {"last_window_t1_s": 8.0, "windows_ingested": 4, "window_lag_s": 0.4, "windows_queued": 1,
             "retention_audio": 0.64, "retention_video": 0.3, "kv_tokens": 500, "kv_bytes": 2**20,
             "windows_evicted": 0, "video_dropped": 5, "audio_dropped_samples": 16000,
             "source": {"video_dropped": 5, "audio_dropped_samples": 16000}}  # one set of counters, shown once
    line = status_line(stats)
    assert "windows 4 (behind live 0.4s, queued 1)" in line
    assert "dropped video 5" in line and "dropped audio 1.0s" in line
    assert "behind live -" in status_line({**stats, "window_lag_s": None})  # a replay: no live clock
    assert "source ended" in status_line({**stats, "source_ended": True})


def test_answers_say_which_windows_they_saw_sink_and_recent_apart():
    evicted = Answer("x", 1.0, 2.0, (0, 100), (0.0, 202.0), 1, sink_window_range=(0, 0), sink_time_range_s=(0.0, 2.0),
                     recent_window_range=(91, 100), recent_time_range_s=(182.0, 202.0), windows_cached=11,
                     windows_evicted=90)
    assert evicted.has_gap
    assert seen_windows(evicted) == "windows 0-0 (sink, t=0-2s) and 91-100 (t=182-202s), 90 evicted"
    whole = Answer("x", 1.0, 2.0, (0, 3), (0.0, 8.0), 1, sink_window_range=(0, 0), sink_time_range_s=(0.0, 2.0),
                   recent_window_range=(1, 3), recent_time_range_s=(2.0, 8.0), windows_cached=4)
    assert not whole.has_gap and seen_windows(whole) == "windows 0-3 (t=0-8s)"
    assert seen_windows(Answer("x", 1.0, 2.0, None, None)) == ""
