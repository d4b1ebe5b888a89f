"""Which job the one model thread runs next, across every stream of a :class:`ModelWorker`.

Pure bookkeeping (no threads, no model), so the policy is tested on its own:

0. Users' questions are never delayed by standing questions (:mod:`omnizip_stream.watch`): a
   stream's due standing questions (``"watch"``) run after every waiting user question and before
   any window, so before that stream's next window.
1. **Questions first**, FIFO within a stream and round-robin across streams: the stream whose
   question was served last goes to the back of the line, so a stream with many waiting questions
   cannot make another stream's question wait for more than one of its own.
2. **Then windows, earliest real-time deadline first.** Only the oldest pending window of each
   stream is a candidate (a stream's windows are ingested in order); its deadline is the time on
   the worker's clock (:mod:`omnizip_stream.clock`, shared by its streams) at which it was complete
   at the live source. Ties go to the window pushed first.

Batches (``ModelWorker(max_batch=...)``): one question of each of up to ``max_batch`` streams in
round-robin order, or the oldest pending window of each of up to ``max_batch`` streams, earliest
deadlines first, run together (:meth:`Scheduler.pick_batch`). A batch that is being worked on is
never interrupted: a question waits at most for one batch (one window each of a few streams).

**The one video drop policy** (:func:`shed_video`, applied by ``StreamSession.push_window`` when the
stream's oldest pending window is more than a window behind real time): only the newest
``keep_video`` pending windows keep their video; older ones lose it, oldest first; audio is never
dropped, except whole windows beyond ``max_backlog_s`` of pending audio, oldest first (counted and
logged). Nothing else in the pipeline drops media by policy: the sources and the windowing only
buffer (bounded) and count.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from omnizip.preprocess import PreparedVideo
from omnizip_stream.window import Window

logger = logging.getLogger(__name__)


@dataclass
class PendingWindow:
    """A window waiting for the model.

    Attributes:
        window: the media.
        pushed_at: clock time (the worker's :class:`~omnizip_stream.clock.Clock`) when it was queued.
        deadline_s: clock time at which the window was complete at the live source.
        seq: worker-wide push order (ties between equal deadlines).
        prepared: its frames being resized and patchified off the model thread
            (:mod:`~omnizip_stream.server.prepare`), or None.
    """

    window: Window
    pushed_at: float
    deadline_s: float
    seq: int
    prepared: PreparedVideo | None = None


class StreamQueues(Protocol):
    """What the scheduler reads of a stream: its pending questions and windows, oldest first."""

    queries: collections.deque[Any]
    windows: collections.deque[PendingWindow]

    @property
    def watch_due(self) -> bool:
        """Standing questions wait to run after the stream's last window."""


class Scheduler:
    """Round-robin questions, then earliest-deadline windows (see the module docstring)."""

    def __init__(self) -> None:
        self._order: list[str] = []  # question round-robin: next candidate first

    def add(self, stream_id: str) -> None:
        """A new stream joins at the back of the question line."""
        if stream_id not in self._order:
            self._order.append(stream_id)

    def remove(self, stream_id: str) -> None:
        """Forget a stream."""
        if stream_id in self._order:
            self._order.remove(stream_id)

    def pick(self, streams: Mapping[str, StreamQueues]) -> tuple[str, str] | None:
        """The next single job: ``(stream_id, "query" | "watch" | "window")`` or None when all are idle.

        A batch of one of :meth:`pick_batch`.
        """
        picked = self.pick_batch(streams, 1)
        return None if picked is None else (picked[1][0], picked[0])

    def pick_batch(self, streams: Mapping[str, StreamQueues], max_batch: int) -> tuple[str, list[str]] | None:
        """The next batch: ``("query", ids)``, ``("watch", ids)`` or ``("window", ids)`` (one job of each stream), or None.

        Questions: up to ``max_batch`` streams with a waiting question, in round-robin order; each
        moves to the back of the question line. Else standing questions due after a stream's last
        window (``watch_due``). Else windows: up to ``max_batch`` streams whose
        oldest pending windows have the earliest deadlines (ties: pushed first). The caller pops
        one job from each stream's queue.
        """
        asking = [sid for sid in self._order if self._has(streams, sid, "queries")][:max_batch]
        if asking:
            for stream_id in asking:
                self._order.remove(stream_id)
                self._order.append(stream_id)
            return "query", asking
        # standing questions (omnizip_stream.watch): after users' questions, before the next window
        watching = [sid for sid in self._order if getattr(streams.get(sid), "watch_due", False)][:max_batch]
        if watching:
            return "watch", watching
        heads = sorted((streams[sid].windows[0].deadline_s, streams[sid].windows[0].seq, sid)
                       for sid in self._order if self._has(streams, sid, "windows"))
        return ("window", [sid for _, _, sid in heads[:max_batch]]) if heads else None

    @staticmethod
    def _has(streams: Mapping[str, StreamQueues], stream_id: str, queue: str) -> bool:
        queues = streams.get(stream_id)
        return queues is not None and bool(getattr(queues, queue))


MAX_BACKLOG_S = 120.0  # pending audio a stream behind real time keeps before dropping whole windows


@dataclass
class Shed:
    """What one application of :func:`shed_video` removed (the session adds it to the stream's counters)."""

    video_dropped: int = 0  # frames
    windows_video_stripped: int = 0
    windows_dropped: int = 0  # whole windows, audio included
    audio_dropped_samples: int = 0

    def counts(self) -> dict[str, int]:
        """The non-zero counts, keyed as in :class:`~omnizip_stream.sources.base.StreamCounters`."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v}


def shed_video(pending: collections.deque[PendingWindow], *, keep_video: int,
               max_backlog_s: float = MAX_BACKLOG_S) -> Shed:
    """The one drop policy for a stream behind real time (see the module docstring); edits ``pending``.

    Video: every pending window but the newest ``keep_video`` loses its frames (its ``video_dropped``
    grows by them; audio and duration stay). Audio: while more than ``max_backlog_s`` of windows are
    pending (and more than one), the oldest whole window is dropped, with a warning.

    Returns:
        The counts of what was removed.
    """
    shed = Shed()
    for item in list(pending)[: max(0, len(pending) - keep_video)]:
        window = item.window
        if window.num_frames:
            item.window = dataclasses.replace(
                window, frames=np.zeros((0, 0, 0, 3), np.uint8), frame_pts_s=np.zeros(0),
                duration_s=window.duration_s, video_dropped=window.video_dropped + window.num_frames,
            )
            shed.video_dropped += window.num_frames
            shed.windows_video_stripped += 1
            if item.prepared is not None and item.prepared.cancel is not None:
                item.prepared.cancel()  # its frames will not be encoded
            item.prepared = None
            logger.warning("model behind real time: dropped %d frames of window t=%.1fs",
                           window.num_frames, window.t0_s)
    backlog_s = sum(float(p.window.duration_s or 0.0) for p in pending)
    while len(pending) > 1 and backlog_s > max_backlog_s + 1e-9:
        window = pending.popleft().window
        backlog_s -= float(window.duration_s or 0.0)
        shed.windows_dropped += 1
        shed.audio_dropped_samples += int(window.audio.shape[0])
        shed.video_dropped += window.num_frames
        logger.warning("model %.0f s behind the live stream: dropped the window at %.1f s (audio included)",
                       backlog_s, window.t0_s)
    return shed
