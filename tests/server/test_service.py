"""StreamServer: many streams on one model, each fed from its own source; failing sources retried and reported."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from server_helpers import adapter_for, stream_config, windows_for

from omnizip_stream.clock import ManualClock
from omnizip_stream.server.config import ServerConfig, ServerSettings, StreamSpec
from omnizip_stream.server.service import StreamServer
from omnizip_stream.sources import SourceError
from omnizip_stream.sources.base import StreamCounters

FAST_RETRY = ServerSettings(retry_min_s=0.01, retry_max_s=0.04)


def spec(stream_id, source="synthetic", **overrides):
    """A replayed (as fast as consumed), 6-s stream of the tiny model."""
    return StreamSpec(stream_id, source, stream_config(**overrides), realtime=False, duration_s=6.0, max_side=112)


def server_for(tiny25, *streams, settings=FAST_RETRY, **kwargs):
    return StreamServer(ServerConfig(stream_config(), settings, tuple(streams)), adapter=adapter_for(tiny25), **kwargs)


class FakeWindows:
    """A source connection that yields ``windows`` then ends, or raises ``fail`` after them."""

    def __init__(self, windows, fail=None, clock=None):
        self.windows, self.fail, self.clock = list(windows), fail, clock
        self.counters = StreamCounters()
        self.live = clock is not None
        self.t0 = clock.now() if clock is not None else 0.0

    def session_time(self):
        return self.clock.now() - self.t0

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.windows:
            if self.clock is not None:  # live: a window is complete at its end
                self.clock.advance(max(0.0, self.windows[0].t1_s - self.session_time()))
            return self.windows.pop(0)
        if self.fail is not None:
            raise self.fail
        raise StopAsyncIteration

    async def aclose(self):
        pass


def scripted_source(connections, clock=None):
    """An ``open_source`` whose successive opens are ``connections``: a list of windows (then an
    exception to raise after them, or None for the end of the source), or an exception raised at open."""
    opened = []

    @contextlib.asynccontextmanager
    async def open_source(spec, *, window_s, fps, clock):
        step = connections[min(len(opened), len(connections) - 1)]
        opened.append(spec.id)
        if isinstance(step, BaseException):
            raise step
        windows, fail = step
        yield FakeWindows(windows, fail, clock if live else None)

    live = clock is not None
    return open_source, opened


async def test_streams_are_served_by_one_model_and_described(tiny25):
    events = []
    async with server_for(tiny25, spec("door"), spec("kitchen", "synthetic:seed=5", rho_video=0.3)) as server:
        server.on_change.append(lambda event, info: events.append((event, info["id"], info["state"])))
        assert server.ids() == ["door", "kitchen"]
        door, kitchen = server.session("door"), server.session("kitchen")
        assert door.adapter is kitchen.adapter is server.adapter and door.engine is not kitchen.engine
        await asyncio.gather(server.stream("door").wait(), server.stream("kitchen").wait())
        answers = await asyncio.gather(door.ask("what?", 3), kitchen.ask("and here?", 3))
        assert all(a.window_range == (0, 2) for a in answers)  # each saw its own 3 windows
        described = {d["id"]: d for d in server.describe()}
        assert described["door"]["state"] == described["kitchen"]["state"] == "ended"
        assert described["door"]["windows_ingested"] == 3 and described["door"]["retries"] == 0
        assert kitchen.stats()["retention_video"] > door.stats()["retention_video"]  # its own config
        assert door.stats()["source_state"] == "ended"

        yard = await server.add(spec("yard"))
        assert server.ids() == ["door", "kitchen", "yard"]
        await server.stream("yard").wait()
        assert yard.stats()["windows_ingested"] == 3
        with pytest.raises(ValueError, match="already being served"):
            await server.add(spec("yard"))
        with pytest.raises(ValueError, match="one model"):
            await server.add(StreamSpec("other", "synthetic", stream_config().replace(model="tiny-qwen3")))
        await server.remove("door")
        assert server.ids() == ["kitchen", "yard"] and door.engine is None  # its cache is freed
        with pytest.raises(KeyError):
            await server.remove("door")
        with pytest.raises(KeyError):
            server.session("door")
        assert await kitchen.ask("still here?", 2)  # the others go on
    assert ("added", "yard", "starting") in events and ("removed", "door", "ended") in events
    assert ("state", "yard", "ended") in events
    assert not server.worker.running


async def test_a_failing_source_is_retried_and_reported_and_never_affects_the_others(tiny25, tmp_path):
    bad = StreamSpec("bad", f"file:{tmp_path / 'does_not_exist.mp4'}", stream_config(), realtime=False)
    async with server_for(tiny25, bad, spec("good")) as server:
        await server.stream("good").wait()
        for _ in range(1000):  # bounded: 3 retries take ~0.1 s
            if server.stream("bad").retries >= 3:
                break
            await asyncio.sleep(0.01)
        good, bad_info = server.describe()[1], server.describe()[0]
        assert good["state"] == "ended" and good["windows_ingested"] == 3 and good["last_error"] is None
        assert bad_info["state"] == "retrying" and bad_info["retries"] >= 3
        assert "does_not_exist.mp4" in bad_info["last_error"]
        stats = server.session("bad").stats()
        assert stats["source_state"] == "retrying" and stats["source_retries"] >= 3
        assert "does_not_exist" in stats["source_error"] and stats["windows_ingested"] == 0
        assert (await server.session("good").ask("what?", 2)).window_range == (0, 2)


async def test_stream_time_continues_across_a_source_that_dies_mid_run(tiny25):
    windows = windows_for(8.0, 1)
    open_source, opened = scripted_source([
        SourceError("rtsp://cam:secret@10.0.0.9/s: connection refused"),  # the first open fails
        (windows[:2], SourceError("rtsp://cam:secret@10.0.0.9/s: connection lost")),  # dies after 2 windows
        (windows[:2], None),  # the new connection starts at t=0 again, then the source ends
    ])
    cam = StreamSpec("cam", "rtsp://cam:secret@10.0.0.9/s", stream_config())
    async with server_for(tiny25, cam, open_source=open_source) as server:
        run = server.stream("cam")
        await run.wait()
        assert opened == ["cam"] * 3 and run.retries == 2 and run.state == "ended"
        session = server.session("cam")
        assert [r.t0_s for r in session.reports] == [0.0, 2.0, 4.0, 6.0]  # one time line, no overlap
        assert session.stats()["last_window_t1_s"] == 8.0
        answer = await session.ask("what happened?", 2)
        assert answer.window_range == (0, 3) and answer.time_range_s == (0.0, 8.0)
        info = server.describe()[0]
        assert info["source"] == "rtsp://***@10.0.0.9/s" and "secret" not in info["last_error"]
        assert "connection lost" in info["last_error"]


async def test_a_live_outage_is_a_gap_in_stream_time(tiny25):
    clock = ManualClock(100.0)
    windows = windows_for(4.0, 1)
    open_source, _ = scripted_source([(windows, SourceError("lost")), (windows, None)], clock=clock)
    settings = ServerSettings(retry_min_s=10.0, retry_max_s=10.0)  # the manual clock jumps 10 s at once
    async with server_for(tiny25, StreamSpec("cam", "camera", stream_config()), settings=settings,
                          clock=clock, open_source=open_source) as server:
        await server.stream("cam").wait()
        reports = server.session("cam").reports
        # Down at t=4 s, back 10 s later: the new windows start at t=14 s (a whole window), not at 4 or 0.
        assert [r.t0_s for r in reports] == [0.0, 2.0, 14.0, 16.0]


async def test_a_run_without_retries_raises_the_source_error(tiny25, tmp_path):
    bad = StreamSpec("bad", f"file:{tmp_path / 'does_not_exist.mp4'}", stream_config(), realtime=False)
    async with server_for(tiny25, settings=ServerSettings(max_source_retries=0)) as server:
        with pytest.raises(SourceError, match="does_not_exist"):
            await server.add(bad, wait_open=True)
        assert server.ids() == []
        await server.add(spec("good"), wait_open=True)
        await server.stream("good").wait()


async def test_retries_back_off_exponentially_up_to_the_cap(tiny25):
    clock = ManualClock(0.0)
    waits = []
    original = clock.asleep

    async def asleep(seconds):
        waits.append(seconds)
        await original(seconds)

    clock.asleep = asleep
    open_source, _ = scripted_source([SourceError("down")] * 6 + [([], None)])
    settings = ServerSettings(retry_min_s=1.0, retry_max_s=5.0)
    async with server_for(tiny25, StreamSpec("cam", "camera", stream_config()), settings=settings, clock=clock,
                          open_source=open_source) as server:
        await server.stream("cam").wait()
        assert waits == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0] and server.stream("cam").retries == 6
        assert server.stream("cam").state == "ended"


async def test_a_stream_removed_while_it_is_starting_is_closed_and_its_add_refused(tiny25):
    async with server_for(tiny25) as server:
        adding = asyncio.ensure_future(server.add(spec("cam")))
        for _ in range(1000):  # until add() has reserved the id (its engine starts on the model thread)
            if server.ids():
                break
            await asyncio.sleep(0)
        assert server.ids() == ["cam"] and server.stream("cam").state == "starting"
        session = server.session("cam")
        await server.remove("cam")
        with pytest.raises(ValueError, match="removed while it was starting"):
            await adding
        assert server.ids() == [] and session.stopping and server.worker.streams() == []
        await server.add(spec("cam"))  # the id is free again
        await server.stream("cam").wait()


async def test_the_server_files_memory_budget_and_batch_size_reach_the_worker(tiny25):
    from omnizip_stream.server.budget import AdmissionError

    settings = ServerSettings(kv_budget_mb=3.0, max_batch=3, retry_min_s=0.01, retry_max_s=0.04)
    async with server_for(tiny25, spec("a", cache_max_mb=2.0), settings=settings) as server:
        assert server.worker.max_batch == 3
        with pytest.raises(AdmissionError, match=r"stream 'b' needs 2 MiB.*1 MiB of the 3 MiB budget are free"):
            await server.add(spec("b", cache_max_mb=2.0))
        assert server.ids() == ["a"]
        await server.remove("a")
        await server.add(spec("b", cache_max_mb=2.0))  # the room "a" held is free again
        assert server.ids() == ["b"]
