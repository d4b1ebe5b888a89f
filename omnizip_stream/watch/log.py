"""The per-stream alert log: JSON lines, appended (and fsynced) before an alert is published.

One file per stream, ``<dir>/<stream_id>.alerts.jsonl``; each line is one alert with its per-stream
``seq`` (1, 2, ...; continued across restarts). A broker outage loses no alert: it is on disk first,
then queued for the broker. :meth:`AlertLog.read` returns the alerts after a ``seq`` (the HTTP
``?since=`` of the issue).

Delivery survives a restart: next to the log, ``<stream_id>.alerts.published`` holds the highest ``seq``
up to which every alert was acknowledged by the broker (:meth:`AlertLog.mark_published`, written by
the MQTT publisher after the PUBACKs; replaced atomically, so a crash leaves the old or the new value,
never a torn one). A publisher that starts for the stream first queues :meth:`AlertLog.unpublished`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def default_log_dir() -> Path:
    """``$OMNIZIP_ALERTS_DIR``, else ``$XDG_STATE_HOME/omnizip/alerts`` (``~/.local/state/omnizip/alerts``)."""
    env = os.environ.get("OMNIZIP_ALERTS_DIR")
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "omnizip" / "alerts"


class AlertLog:
    """Append-only JSONL alerts of one stream.

    Args:
        directory: where the stream's file lives (created on the first append).
        stream_id: the stream's id (the file name).
    """

    def __init__(self, directory: str | Path, stream_id: str) -> None:
        self.path = Path(directory) / f"{stream_id}.alerts.jsonl"
        self.marker_path = Path(directory) / f"{stream_id}.alerts.published"
        self._lock = threading.Lock()
        # never below the marker: a log deleted by hand must not make new alerts look published
        self._seq = max(self._last_seq(), self.published_seq())

    def _last_seq(self) -> int:
        last = 0
        for alert in self.read():
            last = max(last, int(alert.get("seq", 0)))
        return last

    def append(self, alert: dict[str, Any]) -> dict[str, Any]:
        """Give ``alert`` the next ``seq``, write it as one line and fsync; returns it."""
        with self._lock:
            self._seq += 1
            alert["seq"] = self._seq
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps(alert, ensure_ascii=False, separators=(",", ":")) + "\n"
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        return alert

    def read(self, since: int = 0) -> list[dict[str, Any]]:
        """Alerts with ``seq > since``, oldest first (a damaged line is skipped with a warning)."""
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    alert = json.loads(line)
                except json.JSONDecodeError:
                    logger.warning("%s:%d: damaged alert line skipped", self.path, n)
                    continue
                if isinstance(alert, dict) and int(alert.get("seq", 0)) > since:
                    out.append(alert)
        return out

    def published_seq(self) -> int:
        """The ``seq`` up to which every alert was acknowledged by the broker (0: none, or no marker yet).

        A damaged marker counts as 0 (with a warning): everything is sent again rather than lost.
        """
        try:
            text = self.marker_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            logger.warning("%s: cannot read the published marker (%s); alerts will be sent again", self.marker_path, exc)
            return 0
        if not text.isdigit():
            logger.warning("%s: damaged published marker %r; alerts will be sent again", self.marker_path, text[:40])
            return 0
        return int(text)

    def mark_published(self, seq: int) -> None:
        """Record that every alert up to ``seq`` reached the broker (write a temp file, fsync, rename over)."""
        self.marker_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.marker_path.with_name(self.marker_path.name + ".tmp")
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{int(seq)}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.marker_path)
        try:  # the rename itself survives a power cut once the directory is synced (POSIX; not on Windows)
            fd = os.open(self.marker_path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def unpublished(self) -> list[dict[str, Any]]:
        """The logged alerts the broker has not acknowledged (``seq`` above the marker), oldest first."""
        return self.read(since=self.published_seq())
