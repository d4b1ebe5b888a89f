"""ModelWorker: one model thread, a registry of streams added and removed at run time, fair scheduling."""

from __future__ import annotations

import asyncio

import pytest
from server_helpers import gate_ingest, stream_config, trace_jobs, until, windows_for, worker_for

from omnizip_stream import Answer, QueryError
from omnizip_stream.kv import CacheFullError


async def test_streams_share_one_model_and_one_thread(tiny25):
    import threading

    async with worker_for(tiny25) as worker:
        a = await worker.add_stream("a", stream_config())
        b = await worker.add_stream("b", stream_config(rho_video=0.3))
        assert worker.streams() == ["a", "b"]
        assert a.adapter is b.adapter is worker.adapter and a.engine is not b.engine
        assert a.engine.cache is not b.engine.cache and a.engine.compressor is not b.engine.compressor
        threads = set()

        def recording(original):
            def begin_window(window, *prepared):
                threads.add(threading.get_ident())
                return original(window, *prepared)
            return begin_window

        a.engine.begin_window = recording(a.engine.begin_window)  # alone or batched, a window begins here
        b.engine.begin_window = recording(b.engine.begin_window)
        for wa, wb in zip(windows_for(4.0, 1), windows_for(4.0, 2), strict=True):
            await a.push_window(wa)
            await b.push_window(wb)
        await asyncio.gather(a.drain(), b.drain())
        assert threads == {worker._thread.ident}  # both streams' windows ran on the worker's one thread
        assert a.stats()["windows_ingested"] == b.stats()["windows_ingested"] == 2
        assert b.stats()["retention_video"] > a.stats()["retention_video"]  # its own config: less pruning
        with pytest.raises(ValueError, match="already being served"):
            await worker.add_stream("a", stream_config())
    assert worker.streams() == [] and not worker.running


async def test_add_and_remove_streams_at_run_time(tiny25):
    async with worker_for(tiny25) as worker:
        a = await worker.add_stream("a", stream_config())
        await a.push_window(windows_for(2.0, 1)[0])
        await a.drain()
        gate, entered = gate_ingest(a)
        for w in windows_for(8.0, 1):
            await a.push_window(w)
        assert await asyncio.to_thread(entered.wait, 10)  # the model thread is stuck in a's window
        question = asyncio.ensure_future(a.ask("still there?", 2))
        await until(lambda: a.stats()["queries_queued"] == 1)
        removal = asyncio.ensure_future(worker.remove_stream("a"))
        await until(lambda: a.stopping)
        with pytest.raises(QueryError) as err:
            await question  # a pending question of a removed stream fails at once
        assert err.value.code == "internal" and "closed" in err.value.message
        assert not removal.done()  # removal waits for the window in progress
        gate.set()
        await removal
        assert a.stats()["windows_discarded"] == 3 and worker.streams() == []
        with pytest.raises(QueryError):
            await a.push_window(windows_for(2.0, 1)[0])
        # The same id can be served again (a fresh stream), while another stream is added beside it.
        b = await worker.add_stream("b", stream_config())
        a2 = await worker.add_stream("a", stream_config())
        assert worker.streams() == ["b", "a"] and a2 is not a and a2.stats()["windows_ingested"] == 0
        await b.push_window(windows_for(2.0, 2)[0])
        await b.drain()
        assert isinstance(await b.ask("what now?", 2), Answer)


async def test_a_stream_that_does_not_fit_the_model_is_refused_and_the_others_go_on(tiny25):
    async with worker_for(tiny25) as worker:
        a = await worker.add_stream("a", stream_config())
        with pytest.raises(CacheFullError, match="reserved"):
            await worker.add_stream("bad", stream_config(cache_max_tokens=40))  # less than a question needs
        assert worker.streams() == ["a"]
        await a.push_window(windows_for(2.0, 1)[0])
        await a.drain()
        assert isinstance(await a.ask("ok?", 2), Answer)


async def test_a_flooded_stream_delays_another_streams_question_by_one_window_at_most(tiny25):
    worker = worker_for(tiny25)
    trace = trace_jobs(worker)
    async with worker:
        flood = await worker.add_stream("flood", stream_config())
        quiet = await worker.add_stream("quiet", stream_config())
        await quiet.push_window(windows_for(2.0, 2)[0])
        await quiet.drain()
        gate, entered = gate_ingest(flood)
        for w in windows_for(24.0, 1):  # 12 windows pile up behind the one in progress
            await flood.push_window(w)
        assert await asyncio.to_thread(entered.wait, 10)
        question = asyncio.ensure_future(quiet.ask("anything new?", 2))
        await until(lambda: quiet.stats()["queries_queued"] == 1)
        assert flood.stats()["windows_queued"] == 11
        start = len(trace)
        gate.set()
        assert isinstance(await question, Answer)
        await flood.drain()
        after = trace[start - 1:]
        assert after[:3] == [("flood", "window"), ("quiet", "query"), ("flood", "window")]
        assert flood.stats()["windows_ingested"] == 12


async def test_questions_are_served_round_robin_across_streams(tiny25):
    worker = worker_for(tiny25)
    trace = trace_jobs(worker)
    async with worker:
        a = await worker.add_stream("a", stream_config())
        b = await worker.add_stream("b", stream_config())
        for s, seed in ((a, 1), (b, 2)):
            await s.push_window(windows_for(2.0, seed)[0])
            await s.drain()
        gate, entered = gate_ingest(a)
        await a.push_window(windows_for(4.0, 1)[1])
        assert await asyncio.to_thread(entered.wait, 10)
        asks = [asyncio.ensure_future(a.ask(f"a{i}?", 2)) for i in range(4)]
        asks += [asyncio.ensure_future(b.ask(f"b{i}?", 2)) for i in range(2)]
        await until(lambda: a.stats()["queries_queued"] == 4 and b.stats()["queries_queued"] == 2)
        start = len(trace)
        gate.set()
        await asyncio.gather(*asks)
        assert [sid for sid, kind in trace[start:] if kind == "query"] == ["a", "b", "a", "b", "a", "a"]


async def test_closing_the_worker_closes_every_stream(tiny25):
    worker = worker_for(tiny25)
    async with worker:
        a = await worker.add_stream("a", stream_config())
        b = await worker.add_stream("b", stream_config())
        await b.push_window(windows_for(2.0, 2)[0])
        await b.drain()
        gate, entered = gate_ingest(a)
        for w in windows_for(6.0, 1):
            await a.push_window(w)
        assert await asyncio.to_thread(entered.wait, 10)
        question = asyncio.ensure_future(b.ask("still there?", 2))
        await until(lambda: b.stats()["queries_queued"] == 1)
        thread = worker._thread
        closing = asyncio.ensure_future(worker.close())
        await until(lambda: a.stopping and b.stopping)
        gate.set()
        await closing
    with pytest.raises(QueryError) as err:
        await question
    assert err.value.code == "internal"
    assert a.stats()["windows_discarded"] == 2 and a.stats()["windows_ingested"] == 1
    assert not worker.running and worker.streams() == []
    thread.join(10)  # it has posted its exit; it ends right after
    assert not thread.is_alive()
