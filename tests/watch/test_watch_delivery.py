"""Durable alert delivery (no broker, no model): the published marker, the replay order, the backlog window."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from omnizip_stream.query.outbox import Outbox, OutMessage
from omnizip_stream.watch.delivery import AlertDelivery
from omnizip_stream.watch.log import AlertLog
from omnizip_stream.watch.mqtt import WatchDesk
from omnizip_stream.watch.registry import StreamWatches


def _alert(n: int) -> dict[str, Any]:
    return {"type": "alert", "stream_id": "cam", "watch_id": "dog", "question": "Is a dog barking?",
            "probability": 0.9, "window": n}


def _log(tmp_path: Path, count: int) -> AlertLog:
    log = AlertLog(tmp_path, "cam")
    for n in range(count):
        log.append(_alert(n))
    return log


def _seqs(outbox: Outbox) -> list[int]:
    return [json.loads(m.payload)["seq"] for m in list(outbox._items)]


def _ack(outbox: Outbox, count: int) -> list[OutMessage]:
    msgs = [outbox.popleft() for _ in range(count)]
    for msg in msgs:
        outbox.acknowledged(msg)
    return msgs


def test_the_marker_is_atomic_and_new_seqs_never_go_below_it(tmp_path):
    log = _log(tmp_path, 3)
    assert log.published_seq() == 0 and [a["seq"] for a in log.unpublished()] == [1, 2, 3]
    log.mark_published(2)
    assert log.marker_path.read_text() == "2\n" and not list(tmp_path.glob("*.tmp"))
    assert [a["seq"] for a in AlertLog(tmp_path, "cam").unpublished()] == [3]
    log.path.unlink()  # the log deleted by hand: a new alert must not take a seq the marker calls published
    assert AlertLog(tmp_path, "cam").append(_alert(9))["seq"] == 3
    log.marker_path.write_text("garbage")
    assert AlertLog(tmp_path, "cam").published_seq() == 0  # damaged: everything is sent again, nothing lost


def test_the_marker_moves_only_over_acknowledged_alerts_in_seq_order(tmp_path):
    log = _log(tmp_path, 4)
    log.mark_published(1)
    queued: list[tuple[dict[str, Any], Any]] = []
    delivery = AlertDelivery(log, lambda alert, ack: queued.append((alert, ack)))
    assert delivery.catch_up() == 3 and [a["seq"] for a, _ in queued] == [2, 3, 4]
    queued[1][1]()  # seq 3 acknowledged before seq 2: nothing is marked yet
    assert log.published_seq() == 1
    queued[0][1]()
    assert log.published_seq() == 3
    delivery.offer(log.append(_alert(4)))  # caught up: a new alert is queued at once
    assert [a["seq"] for a, _ in queued] == [2, 3, 4, 5]
    delivery.offer(queued[0][0])  # an alert already queued is not queued twice
    assert len(queued) == 4


def test_a_long_backlog_is_queued_a_window_at_a_time_and_new_alerts_wait_their_turn(tmp_path):
    log = _log(tmp_path, 10)
    outbox = Outbox(100)
    delivery = AlertDelivery(log, lambda alert, ack: outbox.put(OutMessage("t", json.dumps(alert).encode(),
                                                                           on_published=ack)), max_pending=4)
    delivery.catch_up()
    assert _seqs(outbox) == [1, 2, 3, 4]
    delivery.offer(log.append(_alert(10)))  # seq 11 must not overtake 5..10
    assert _seqs(outbox) == [1, 2, 3, 4]
    _ack(outbox, 2)  # half the window acknowledged: the next ones come from the log
    assert log.published_seq() == 2 and _seqs(outbox) == [3, 4, 5, 6]
    sent = []
    while len(outbox):
        sent += [json.loads(m.payload)["seq"] for m in _ack(outbox, 1)]
    assert sent == list(range(3, 12)) and log.published_seq() == 11


class _Streams:
    """A stream directory whose streams are added at run time (``on_change`` hooks)."""

    def __init__(self) -> None:
        self.sessions: dict[str, Any] = {}
        self.on_change: list[Any] = []

    def ids(self) -> list[str]:
        return list(self.sessions)

    def session(self, stream_id: str) -> Any:
        return self.sessions[stream_id]

    def add(self, stream_id: str, session: Any) -> None:
        self.sessions[stream_id] = session
        for hook in self.on_change:
            hook("added", {"id": stream_id})


class _Session:
    def __init__(self, watches: StreamWatches) -> None:
        self.watches = watches


class _Desk:
    def __init__(self) -> None:
        self.streams = _Streams()
        self.outbox = Outbox(100)
        self.counters: Counter[str] = Counter()


async def test_a_stream_added_at_run_time_first_gets_its_unpublished_alerts(tmp_path):
    log = _log(tmp_path, 3)
    log.mark_published(1)
    desk = _Desk()
    watch_desk = WatchDesk(desk, "omnizip")
    desk.streams.on_change.append(lambda *args: watch_desk.attach_all())
    watches = StreamWatches("cam", log=AlertLog(tmp_path, "cam"))
    desk.streams.add("cam", _Session(watches))
    assert _seqs(desk.outbox) == [2, 3] and desk.counters["alerts_replayed"] == 2
    watches.deliver(watches.log.append(_alert(3)))  # a new alert, through the stream's listeners
    assert _seqs(desk.outbox) == [2, 3, 4]
    assert [m.topic for m in desk.outbox._items] == ["omnizip/cam/alerts"] * 3
    _ack(desk.outbox, 3)
    assert AlertLog(tmp_path, "cam").published_seq() == 4


async def test_an_alert_log_set_after_the_publisher_started_is_replayed_before_its_first_new_alert(tmp_path):
    log = _log(tmp_path, 2)
    desk = _Desk()
    watch_desk = WatchDesk(desk, "omnizip")
    watches = StreamWatches("cam")  # no log yet when the publisher attaches
    desk.streams.add("cam", _Session(watches))
    watch_desk.attach_all()
    assert len(desk.outbox) == 0
    watches.log = log
    watches.deliver(log.append(_alert(2)))
    assert _seqs(desk.outbox) == [1, 2, 3]
