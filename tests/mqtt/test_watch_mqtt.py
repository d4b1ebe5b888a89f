"""Standing questions over MQTT: alerts on <p>/<id>/alerts survive a broker restart; registration on <p>/<id>/watch."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mqtt_helpers import fast_config
from omni_helpers import clip_windows, make_adapter, synthetic_clip
from reliability_helpers import device, wait_for

from omnizip_stream.config import StreamConfig
from omnizip_stream.query.mqtt import MqttQueryServer
from omnizip_stream.query.mqtt_client import MqttQueryClient
from omnizip_stream.session import StreamSession
from omnizip_stream.watch.log import AlertLog
from omnizip_stream.watch.mqtt import enable_watches
from omnizip_stream.watch.spec import WatchSpec

pytestmark = pytest.mark.mosquitto

PIXELS = 56 * 56


def _session(tiny25: Any, stream_id: str, **overrides: Any) -> StreamSession:
    cfg = StreamConfig(model="tiny", **{"method": "omnizip", "max_new_tokens": 4, "max_question_tokens": 96,
                                        "video_max_pixels": PIXELS, "window_queue": 16, **overrides})
    return StreamSession(cfg, adapter=make_adapter(tiny25, video_max_pixels=PIXELS), stream_id=stream_id)


def _windows(seconds: float) -> list[Any]:
    wav, frames = synthetic_clip(seconds, seed=2)
    return clip_windows(wav, frames)


@contextlib.asynccontextmanager
async def _serving(session: StreamSession, cfg: Any) -> AsyncIterator[MqttQueryServer]:
    server = MqttQueryServer(session, cfg, check_in_use=False)
    enable_watches(server)
    task = asyncio.ensure_future(server.run())
    try:
        await asyncio.wait_for(server.wait_connected(), 10)
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_alerts_are_logged_first_and_survive_a_broker_restart(tiny25, broker_factory, tmp_path):
    b = broker_factory(persistence=True)
    b.start()
    cfg = fast_config(b.url, "cam")
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    got: list[Any] = []
    async with device(b.port, "alert-watcher", persistent=True, inbox=inbox) as dev:
        await dev.subscribe("omnizip/cam/alerts", qos=1)  # the persistent subscription outlives this client

    async def read() -> None:
        while True:
            got.append(await inbox.get())

    reader = asyncio.ensure_future(read())
    windows = _windows(6.0)
    try:
        async with _session(tiny25, "cam") as session, _serving(session, cfg) as server:
            session.watches.log = AlertLog(tmp_path, "cam")
            session.watches.add(WatchSpec("Is a dog barking?", id="dog", threshold=0.0))
            await session.push_window(windows[0])
            await session.drain()
            await wait_for(lambda: server.stats()["outbox_published"] >= 1, 10)
            await asyncio.to_thread(b.stop)  # the broker goes away: the next alerts are made meanwhile
            for window in windows[1:]:
                await session.push_window(window)
                await session.drain()
            logged = AlertLog(tmp_path, "cam").read()
            assert [a["window"] for a in logged] == [0, 1, 2]  # on disk while the broker is down
            assert server.stats()["outbox_depth"] >= 2
            await asyncio.to_thread(b.start)
            await wait_for(lambda: server.stats()["outbox_published"] >= 3, 20)
            async with device(b.port, "alert-watcher", persistent=True, inbox=inbox):
                await wait_for(lambda: len(got) >= 3, 20)
    finally:
        reader.cancel()
    alerts = [json.loads(m.payload) for m in got]
    assert sorted(a["seq"] for a in alerts) == [1, 2, 3]
    first = min(alerts, key=lambda a: a["seq"])
    assert {"stream_id", "question", "probability", "time_range_s"} <= first.keys()
    assert first["stream_id"] == "cam" and first["watch_id"] == "dog" and first["window"] == 0
    props = dict(got[0].properties.UserProperty)
    assert props["stream_id"] == "cam" and props["watch_id"] == "dog" and float(props["probability"]) >= 0


async def test_register_list_remove_over_mqtt_and_bad_registrations_are_one_line_errors(tiny25, broker):
    cfg = fast_config(broker.url, "yard")
    watch_topic = "omnizip/yard/watch"
    async with _session(tiny25, "yard", max_question_tokens=60) as session, _serving(session, cfg):
        session.watches.max_watches = 2
        async with MqttQueryClient(fast_config(broker.url, "yard", client_id="admin-x")) as client:
            async def call(body: dict[str, Any]) -> dict[str, Any]:
                return await client.request(body, topic=watch_topic, timeout_s=10)

            ok = await call({"op": "add", "watch": {"question": "Is a dog barking?", "threshold": 0.5,
                                                   "debounce": 2, "cooldown_s": 30, "every_windows": 1}})
            assert ok["ok"] and ok["watch_id"] == "w1" and ok["watches"][0]["debounce"] == 2
            ok = await call({"op": "add", "watch": {"id": "cat", "question": "A cat?"}})
            assert ok["ok"] and [w["id"] for w in ok["watches"]] == ["w1", "cat"]
            bad = {
                "too_many": {"op": "add", "watch": {"question": "A third?"}},
                "too_long": {"op": "add", "watch": {"question": "Is there a very large brown dog barking loudly?"}},
                "bad_request": {"op": "add", "watch": {"question": "x?", "threshold": 2}},
                "unknown_watch": {"op": "remove", "watch_id": "nope"},
            }
            for code, body in bad.items():
                reply = await call(body)
                error = reply["error"]
                assert not reply["ok"] and error["code"] == code and "\n" not in error["message"], reply
            assert (await call({"op": "frobnicate"}))["error"]["code"] == "bad_request"
            ok = await call({"op": "remove", "watch_id": "w1"})
            assert ok["ok"] and [w["id"] for w in ok["watches"]] == ["cat"]
            assert [w["id"] for w in (await call({"op": "list"}))["watches"]] == ["cat"]
            # The stream keeps going: windows are ingested, questions answered, the watch evaluated.
            await session.push_window(_windows(2.0)[0])
            await session.drain()
            answer = await client.ask("What is there?", timeout_s=30)
            assert answer["ok"] and isinstance(answer["answer"], str)
            assert session.stats()["watch_evaluations"] == 1


async def test_alerts_not_yet_published_are_sent_by_the_next_start_exactly_once_in_seq_order(
        tiny25, broker_factory, tmp_path):
    """Server 1 publishes alert 1, then loses the broker with 2 and 3 unpublished and stops; 4 is logged
    with no publisher at all. Server 2 (same log dir) sends exactly 2, 3, 4 in order, then new ones; 1 never again."""
    b = broker_factory()
    b.start()
    cfg = fast_config(b.url, "cam")
    windows = _windows(10.0)
    log = AlertLog(tmp_path, "cam")
    async with _session(tiny25, "cam") as session:
        session.watches.log = log
        session.watches.add(WatchSpec("Is a dog barking?", id="dog", threshold=0.0))
        async with _serving(session, cfg) as server:
            await session.push_window(windows[0])
            await session.drain()
            await wait_for(lambda: log.published_seq() == 1, 10)  # acknowledged by the broker, then marked
            await asyncio.to_thread(b.stop)
            for window in windows[1:3]:
                await session.push_window(window)
                await session.drain()
            await wait_for(lambda: server.stats()["outbox_depth"] >= 2, 10)
        # server 1 stopped with alerts 2 and 3 only in its (lost) outbox and in the log
        session.watches.listeners.clear()  # no publisher at all now (as after the process ended)
        await session.push_window(windows[3])
        await session.drain()
        assert [a["seq"] for a in log.read()] == [1, 2, 3, 4] and log.published_seq() == 1

    await asyncio.to_thread(b.start)
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    async with device(b.port, "alert-watcher", inbox=inbox) as dev:
        await dev.subscribe("omnizip/cam/alerts", qos=1)
        async with _session(tiny25, "cam") as session:  # "the next process": same stream, same log directory
            session.watches.log = AlertLog(tmp_path, "cam")
            session.watches.add(WatchSpec("Is a dog barking?", id="dog", threshold=0.0))
            async with _serving(session, cfg) as server:
                got = [json.loads((await asyncio.wait_for(inbox.get(), 20)).payload)["seq"] for _ in range(3)]
                assert got == [2, 3, 4]  # exactly the unpublished ones, oldest first (1 would come first)
                await session.push_window(windows[4])  # a new alert goes after them
                await session.drain()
                message = await asyncio.wait_for(inbox.get(), 20)
                assert json.loads(message.payload)["seq"] == 5 and dict(message.properties.UserProperty)["seq"] == "5"
                await wait_for(lambda: AlertLog(tmp_path, "cam").published_seq() == 5, 10)
                assert server.stats()["alerts_replayed"] == 3
    assert inbox.empty()
