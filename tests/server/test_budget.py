"""One memory budget for all streams: admission control names what fits; removal frees memory (measured)."""

from __future__ import annotations

import asyncio
import weakref

import pytest
from server_helpers import adapter_for, stream_config, windows_for

from omnizip_stream.kv import CacheFullError
from omnizip_stream.server import ModelWorker
from omnizip_stream.server.budget import AdmissionError, KVBudget, engine_tensors


def test_the_budget_reserves_refuses_and_releases():
    budget = KVBudget(4096)
    for sid in ("door", "yard", "hall"):
        budget.reserve(sid, 1024)
    with pytest.raises(AdmissionError) as err:
        budget.reserve("x", 2048)
    assert str(err.value) == (
        "stream 'x' needs 2048 MiB (cache_max_mb); 1024 MiB of the 4096 MiB budget are free "
        "(3 streams: door 1024, yard 1024, hall 1024 MiB); lower cache_max_mb to <= 1024 or remove a stream"
    )
    budget.reserve("x", 1024)
    with pytest.raises(AdmissionError, match=r"0 MiB of the 4096 MiB budget are free .*remove a stream"):
        budget.reserve("y", 0.5)
    assert budget.release("yard") == 1024 and budget.release("yard") == 0
    assert budget.describe() == {"budget_mb": 4096, "reserved_mb": 3072, "free_mb": 1024,
                                 "streams": {"door": 1024, "hall": 1024, "x": 1024}}
    unlimited = KVBudget(None)
    unlimited.reserve("a", 1 << 20)
    assert unlimited.free_mb is None and unlimited.reserved_mb == 1 << 20
    with pytest.raises(ValueError, match="kv_budget_mb"):
        KVBudget(0)


async def test_a_stream_that_does_not_fit_the_budget_is_refused_and_the_others_go_on(tiny25):
    async with ModelWorker(stream_config(), adapter=adapter_for(tiny25), kv_budget_mb=10) as worker:
        a = await worker.add_stream("a", stream_config(cache_max_mb=4))
        await worker.add_stream("b", stream_config(cache_max_mb=4))
        with pytest.raises(AdmissionError) as err:
            await worker.add_stream("c", stream_config(cache_max_mb=3))
        message = str(err.value)
        assert isinstance(err.value, ValueError) and "\n" not in message
        assert "'c' needs 3 MiB" in message and "2 MiB of the 10 MiB budget are free" in message
        assert "a 4, b 4 MiB" in message and "cache_max_mb to <= 2" in message
        assert worker.streams() == ["a", "b"]
        # A stream that fits the budget but fails at start-up gives its reservation back.
        with pytest.raises(CacheFullError):
            await worker.add_stream("tight", stream_config(cache_max_mb=1, cache_max_tokens=8))
        assert worker.budget_report()["free_mb"] == 2
        await worker.add_stream("c", stream_config(cache_max_mb=2))  # what the message said fits, fits
        assert worker.budget_report() == {"budget_mb": 10, "reserved_mb": 10, "free_mb": 0,
                                          "streams": {"a": 4, "b": 4, "c": 2}}
        await a.push_window(windows_for(2.0, 1)[0])
        await a.drain()
        report = worker.report()
        assert report["a"]["cache_reserved_mb"] == 4 and report["c"]["cache_reserved_mb"] == 2
        assert 0 < report["a"]["cache_used_mb"] < 4 and report["a"]["windows_ingested"] == 1


async def test_removing_a_stream_frees_its_reservation_and_its_memory(tiny25):
    async with ModelWorker(stream_config(), adapter=adapter_for(tiny25), kv_budget_mb=8) as worker:
        a = await worker.add_stream("a", stream_config(cache_max_mb=4))
        b = await worker.add_stream("b", stream_config(cache_max_mb=4))
        for wa, wb in zip(windows_for(6.0, 1), windows_for(6.0, 2), strict=True):
            await a.push_window(wa)
            await b.push_window(wb)
        await asyncio.gather(a.drain(), b.drain())
        with pytest.raises(AdmissionError):
            await worker.add_stream("c", stream_config(cache_max_mb=4))
        stats = a.stats()
        held = stats["kv_bytes"] + stats["store_bytes"]
        refs = [weakref.ref(t) for t in engine_tensors(a.engine)]
        assert held > 0 and held == sum(r().nbytes for r in refs)

        freed = await worker.remove_stream("a")

        assert freed["held_bytes"] == held and freed["still_held_bytes"] == 0
        assert all(r() is None for r in refs)  # every tensor of a's cache is gone
        assert freed["rss_before_mb"] > 0 and freed["rss_after_mb"] > 0
        assert a.engine is None and a.stats()["windows_ingested"] == 3  # the last snapshot stays readable
        assert worker.streams() == ["b"] and worker.budget_report()["free_mb"] == 4
        c = await worker.add_stream("c", stream_config(cache_max_mb=4))  # its room is free again
        await c.push_window(windows_for(2.0, 3)[0])
        answer = await b.ask("What happened?", 2)
        assert answer.tokens_generated >= 1
        await c.drain()
        assert c.stats()["windows_ingested"] == 1
