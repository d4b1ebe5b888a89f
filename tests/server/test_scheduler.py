"""Scheduler: questions round-robin across streams, then windows by real-time deadline, and the one drop policy
(pure, no model)."""

from __future__ import annotations

import collections

import numpy as np

from omnizip_stream.server.scheduler import PendingWindow, Scheduler, shed_video
from omnizip_stream.window import Window


class _Queues:
    def __init__(self) -> None:
        self.queries: collections.deque = collections.deque()
        self.windows: collections.deque = collections.deque()


def _window(t0_s: float, frames: int = 4) -> Window:
    return Window(t0_s, np.zeros(32000, np.float32), np.zeros((frames, 8, 8, 3), np.uint8),
                  t0_s + np.arange(frames) * 0.5, duration_s=2.0)


def _drain(scheduler: Scheduler, streams: dict[str, _Queues]) -> list[tuple[str, str, object]]:
    order = []
    while (picked := scheduler.pick(streams)) is not None:
        sid, kind = picked
        queue = streams[sid].queries if kind == "query" else streams[sid].windows
        order.append((sid, kind, queue.popleft()))
    return order


def test_questions_come_first_round_robin_across_streams_fifo_within_one():
    scheduler, streams = Scheduler(), {s: _Queues() for s in "abc"}
    for sid in "abc":
        scheduler.add(sid)
    streams["a"].queries.extend(["a0", "a1", "a2", "a3"])  # a floods with questions
    streams["b"].queries.extend(["b0"])
    streams["c"].queries.extend(["c0", "c1"])
    streams["a"].windows.append(PendingWindow(_window(0.0), 0.0, deadline_s=0.0, seq=0))
    order = _drain(scheduler, streams)
    assert [item for _, _, item in order[:7]] == ["a0", "b0", "c0", "a1", "c1", "a2", "a3"]
    assert order[-1][:2] == ("a", "window")  # windows only once no question waits


def test_windows_go_by_deadline_each_stream_in_its_own_order():
    scheduler, streams = Scheduler(), {s: _Queues() for s in "ab"}
    scheduler.add("a")
    scheduler.add("b")
    # a started 10 s before b (wall clock): its windows are due earlier, but never out of its own order.
    for i, (sid, deadline) in enumerate([("a", 12.0), ("a", 14.0), ("b", 3.0), ("b", 13.0), ("a", 16.0)]):
        streams[sid].windows.append(PendingWindow(_window(float(i)), 0.0, deadline_s=deadline, seq=i))
    order = [(sid, item.deadline_s) for sid, _, item in _drain(scheduler, streams)]
    assert order == [("b", 3.0), ("a", 12.0), ("b", 13.0), ("a", 14.0), ("a", 16.0)]


def test_equal_deadlines_go_in_push_order_and_removed_streams_are_skipped():
    scheduler, streams = Scheduler(), {s: _Queues() for s in "abc"}
    for sid in "abc":
        scheduler.add(sid)
    for seq, sid in enumerate("cab"):
        streams[sid].windows.append(PendingWindow(_window(0.0), 0.0, deadline_s=5.0, seq=seq))
    scheduler.remove("a")
    streams["b"].queries.append("b0")
    scheduler.add("d")  # a new stream, nothing queued: never picked
    assert [(sid, kind) for sid, kind, _ in _drain(scheduler, streams)] == [("b", "query"), ("c", "window"),
                                                                            ("b", "window")]
    assert scheduler.pick(streams) is None


def test_shedding_keeps_video_in_the_newest_windows_and_every_sample_of_audio():
    pending = collections.deque(PendingWindow(_window(t, frames=f), 0.0, t + 2, i)
                                for i, (t, f) in enumerate([(0.0, 0), (2.0, 4), (4.0, 3), (6.0, 4), (8.0, 4)]))
    shed = shed_video(pending, keep_video=2)
    assert shed.counts() == {"video_dropped": 7, "windows_video_stripped": 2}
    assert [p.window.num_frames for p in pending] == [0, 0, 0, 4, 4]
    assert [p.window.video_dropped for p in pending] == [0, 4, 3, 0, 0]
    assert all(p.window.audio.size == 32000 and p.window.duration_s == 2.0 for p in pending)
    assert shed_video(pending, keep_video=2).counts() == {}  # applying it again changes nothing


def test_beyond_the_backlog_bound_whole_windows_go_oldest_first_counted_and_logged(caplog):
    pending = collections.deque(PendingWindow(_window(2.0 * k), 0.0, 2.0 * k + 2, k) for k in range(10))
    with caplog.at_level("WARNING", logger="omnizip_stream.server.scheduler"):  # whatever level others left
        shed = shed_video(pending, keep_video=1, max_backlog_s=6.0)
    assert [p.window.t0_s for p in pending] == [14.0, 16.0, 18.0]  # 6 s of audio kept: the newest three
    assert shed.windows_dropped == 7 and shed.audio_dropped_samples == 7 * 32000
    assert shed.video_dropped == 9 * 4 and shed.windows_video_stripped == 9  # counted once: stripped, then dropped
    assert "behind the live stream" in caplog.text
