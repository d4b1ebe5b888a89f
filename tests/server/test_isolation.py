"""Isolation: streams interleaved through one worker get exactly what each gets alone.

Three streams with different inputs and configs share one worker (one model, one thread); their
windows interleave on the model thread, their questions are asked at the same time. Each stream's
KV cache must be bit-identical, and its greedy answers identical, to a run of that stream alone
(``StreamSession.from_config``: a private one-stream worker). A stream whose windows all fail must
not disturb the others. One job at a time here (``max_batch=1``): bit-identical; batches of several
streams are compared in ``test_batching.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from server_helpers import adapter_for, stream_config, trace_jobs, windows_for

from omnizip_stream.query.base import QueryError
from omnizip_stream.server import ModelWorker
from omnizip_stream.session import StreamSession

# stream id -> (config overrides, clip seed, frame size): different inputs and settings per stream.
STREAMS: dict[str, tuple[dict[str, Any], int, tuple[int, int]]] = {
    "door": ({}, 11, (112, 112)),
    "kitchen": ({"rho_video": 0.3, "sink_windows": 2}, 12, (84, 112)),
    "yard": ({"cache_max_tokens": 260, "rho_audio": 0.5}, 13, (112, 84)),  # evicts as it goes
}
SECONDS = 12.0
ASK_AFTER = (2, 5)  # ask every stream a question after these windows


async def _script(sessions: dict[str, StreamSession]) -> dict[str, Any]:
    """Push each stream's windows round-robin; after ``ASK_AFTER`` windows, ask every stream at once."""
    inputs = {sid: STREAMS.get(sid, ({}, 99, (112, 112))) for sid in sessions}
    windows = {sid: windows_for(SECONDS, seed, size) for sid, (_, seed, size) in inputs.items()}
    answers: dict[str, list[tuple[str, Any, int]]] = {sid: [] for sid in sessions}
    for i in range(len(next(iter(windows.values())))):
        for sid, session in sessions.items():
            await session.push_window(windows[sid][i])
        if i in ASK_AFTER:
            await asyncio.gather(*(s.drain() for s in sessions.values()))
            got = await asyncio.gather(*(s.ask(f"Seen {sid}?", 6) for sid, s in sessions.items()),
                                       return_exceptions=True)
            for sid, answer in zip(sessions, got, strict=True):
                answers[sid].append(("error", answer.code) if isinstance(answer, QueryError) else
                                    (answer.text, answer.window_range, answer.tokens_generated))
    await asyncio.gather(*(s.drain() for s in sessions.values()))
    return {sid: _state(session, answers[sid]) for sid, session in sessions.items()}


def _state(session: StreamSession, answers: list[Any]) -> dict[str, Any]:
    cache = session.engine.cache
    kv = session.adapter.cache_tensors(cache.cache)  # [k0, v0, k1, v1, ...]
    return {
        "kv": [(k.clone(), v.clone()) for k, v in zip(kv[::2], kv[1::2], strict=True)],
        "positions": [s.positions.clone() for s in cache.segments],
        "answers": answers,
        "stats": {k: v for k, v in session.engine.stats().items()},
    }


@pytest.fixture(scope="module")
def alone(tiny25) -> dict[str, Any]:
    """Each stream run by itself, through the one-stream path (a private worker per stream)."""
    adapter = adapter_for(tiny25)

    async def run(sid: str) -> dict[str, Any]:
        async with StreamSession.from_config(stream_config(**STREAMS[sid][0]), adapter=adapter) as session:
            return (await _script({sid: session}))[sid]

    return {sid: asyncio.run(run(sid)) for sid in STREAMS}


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["answers"] == want["answers"]
    assert got["stats"] == want["stats"]
    assert len(got["kv"]) == len(want["kv"]) > 0
    for (k1, v1), (k2, v2) in zip(got["kv"], want["kv"], strict=True):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)  # bit-identical, not approximately
    assert all(torch.equal(a, b) for a, b in zip(got["positions"], want["positions"], strict=True))


async def test_interleaved_streams_get_exactly_what_they_get_alone(tiny25, alone):
    worker = ModelWorker(stream_config(), adapter=adapter_for(tiny25), max_batch=1)  # batched: test_batching
    trace = trace_jobs(worker)
    async with worker:
        sessions = {sid: await worker.add_stream(sid, stream_config(**STREAMS[sid][0])) for sid in STREAMS}
        together = await _script(sessions)
    windows = [sid for sid, kind in trace if kind == "window"]
    assert set(windows[:6]) == set(STREAMS)  # the streams' windows really interleaved on the one thread
    assert sum(kind == "query" for _, kind in trace) == len(STREAMS) * len(ASK_AFTER)
    assert alone["yard"]["stats"]["windows_evicted"] > 0  # eviction (and its cache surgery) is covered
    for sid in STREAMS:
        assert len(together[sid]["answers"]) == len(ASK_AFTER)
        _assert_same(together[sid], alone[sid])


async def test_a_failing_stream_does_not_disturb_the_others(tiny25, alone):
    async with ModelWorker(stream_config(), adapter=adapter_for(tiny25), max_batch=1) as worker:
        sessions = {sid: await worker.add_stream(sid, stream_config(**STREAMS[sid][0])) for sid in STREAMS}
        broken = await worker.add_stream("broken", stream_config())

        def fail(window, *prepared):
            raise RuntimeError(f"decoder lost at t={window.t0_s:g}")

        broken.engine.ingest = fail
        sessions = {"broken": broken, **sessions}  # broken goes first in every round
        together = await _script(sessions)
        report = worker.report()
    for sid in STREAMS:
        _assert_same(together[sid], alone[sid])
    n_windows = int(SECONDS / 2)
    assert report["broken"]["windows_failed"] == n_windows and report["broken"]["windows_ingested"] == 0
    assert "decoder lost at t=10" in report["broken"]["last_error"]
    assert together["broken"]["answers"] == [("error", "not_ready")] * len(ASK_AFTER)
    assert all(report[sid]["windows_failed"] == 0 and report[sid]["last_error"] is None for sid in STREAMS)
