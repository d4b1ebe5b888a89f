"""A progress bar on stderr: the evaluation's progress line with a bar in front."""

from __future__ import annotations

from omnizip_stream.evaluation.progress import Progress


class ProgressBar(Progress):
    """``[#####.....] [bench] 12/40 30% | 1.2/s | ETA 0:25 | elapsed 0:10 | note`` on stderr.

    On a terminal the line is rewritten in place (5 times a second at most); otherwise a line is
    printed every ``min_interval_s`` (30 s by default), so logs stay short.
    """

    width = 24

    def line(self, note: str = "") -> str:
        """The bar followed by the counts, rate, ETA and ``note``."""
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        return "[" + "#" * filled + "." * (self.width - filled) + "] " + super().line(note)
