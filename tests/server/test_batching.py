"""Batching across streams: several streams' windows and questions in one model call per stage.

The same streams (different synthetic sources, frame sizes, audio-only and video-less windows, their
own configs, one evicting) run three ways: through a worker batching up to 8 streams, through a
worker running one job at a time (``max_batch=1``), and each alone (``StreamSession.from_config``).
Work is queued while the model thread is held in a window of a stream of its own, so batches of
every stream really form (checked on the batch trace). Each stream must end with the same cache
(keys and values within 1e-5, fp32; same positions) and give the same answers. Failures inside a
batch stay with their stream; a shared model call that raises is rerun one stream at a time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

import numpy as np
import pytest
import torch
from omni_helpers import clip_windows, make_adapter, synthetic_clip
from server_helpers import Hold, stream_config, trace_batches, until

import omnizip.adapters.batch_decode as batch_decode_module
import omnizip_stream.batch as batch_module
from omnizip_stream.query.base import QueryError
from omnizip_stream.server import ModelWorker, PendingWindow, Scheduler
from omnizip_stream.session import StreamSession
from omnizip_stream.window import Window


def _no_video(window: Window) -> Window:
    return Window(window.t0_s, window.audio, np.zeros((0, 0, 0, 3), np.uint8), np.zeros(0), duration_s=window.duration_s)


# Per family: model config, windows per stream, questions after these windows, and the streams
# (id -> config overrides, clip seed, frame size or None for audio only, windows without video).
FAMILIES: dict[str, dict[str, Any]] = {
    "tiny": {
        "config": {}, "pixels": 56 * 56, "window_s": 2.0, "windows": 4, "ask_after": (1, 3),
        "streams": {
            "door": ({"rho_video": 0.3, "sink_windows": 2}, 11, (112, 112), (2,)),
            "yard": ({"cache_max_tokens": 200, "rho_audio": 0.5}, 13, (84, 112), ()),  # evicts as it goes
            "radio": ({}, 14, None, ()),
        },
    },
    "tiny-qwen3": {
        "config": {"model": "tiny-qwen3", "window_s": 8.0, "video_max_pixels": 64 * 64}, "pixels": 64 * 64,
        "window_s": 8.0, "windows": 2, "ask_after": (0, 1),
        "streams": {
            "door": ({}, 21, (64, 64), (1,)),
            "radio": ({"rho_audio": 0.5}, 23, None, ()),
        },
    },
}


def _windows(family: dict[str, Any], sid: str) -> list[Window]:
    if sid in family.get("given_windows", {}):
        return family["given_windows"][sid]
    _, seed, size, no_video = family["streams"][sid]
    seconds = family["window_s"] * family["windows"]
    wav, frames = synthetic_clip(seconds, seed=seed, size=size or (8, 8), video=size is not None)
    out = clip_windows(wav, frames, window_s=family["window_s"])
    return [_no_video(w) if i in no_video else w for i, w in enumerate(out)]


def _config(family: dict[str, Any], sid: str | None = None) -> Any:
    overrides = family["streams"][sid][0] if sid else {}
    return stream_config(**{"video_max_pixels": family["pixels"], **family["config"], **overrides})


async def _script(family: dict[str, Any], sessions: dict[str, StreamSession], hold: Hold | None,
                  on_text: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Push every stream's windows up to each question point, then ask every stream at once."""
    windows = {sid: _windows(family, sid) for sid in sessions}
    answers: dict[str, list[Any]] = {sid: [] for sid in sessions}
    held = hold if hold is not None else contextlib.nullcontext()
    start = 0
    for stop in family["ask_after"]:
        async with held:
            for i in range(start, stop + 1):
                for sid, session in sessions.items():
                    await session.push_window(windows[sid][i])
        await asyncio.gather(*(s.drain() for s in sessions.values()))
        async with held:
            asks = {sid: asyncio.ensure_future(s.ask(f"Seen {sid}?", 6, on_text=on_text[sid].append if on_text else None))
                    for sid, s in sessions.items()}
            await until(lambda tasks=asks: all(s.stats()["queries_queued"] or tasks[sid].done()
                                               for sid, s in sessions.items()))
        for sid, task in asks.items():
            try:
                answer = await task
                answers[sid].append((answer.text, answer.window_range, answer.tokens_generated))
                assert 0 < answer.ttft_ms <= answer.total_ms
            except QueryError as exc:
                answers[sid].append(("error", exc.code))
        start = stop + 1
    return {sid: _state(session, answers[sid]) for sid, session in sessions.items()}


def _pairs(tensors: list[Any]) -> list[tuple[Any, Any]]:
    """``[k0, v0, k1, v1, ...]`` (``adapter.cache_tensors``) as per-layer ``(k, v)`` pairs."""
    return list(zip(tensors[0::2], tensors[1::2], strict=True))


def _state(session: StreamSession, answers: list[Any]) -> dict[str, Any]:
    cache = session.engine.cache
    return {
        "kv": [(k.clone(), v.clone()) for k, v in _pairs(session.adapter.cache_tensors(cache.cache))],
        "positions": [s.positions.clone() for s in cache.segments],
        "answers": answers,
        "stats": dict(session.engine.stats()),
    }


def _assert_close(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["answers"] == want["answers"]
    assert got["stats"] == want["stats"]
    assert len(got["kv"]) == len(want["kv"]) > 0
    for (k1, v1), (k2, v2) in zip(got["kv"], want["kv"], strict=True):
        torch.testing.assert_close(k1, k2, atol=1e-5, rtol=0)
        torch.testing.assert_close(v1, v2, atol=1e-5, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(got["positions"], want["positions"], strict=True))


def _adapter(request: pytest.FixtureRequest, name: str) -> Any:
    bundle = request.getfixturevalue("tiny25" if name == "tiny" else "tiny3")
    return make_adapter(bundle, video_max_pixels=FAMILIES[name]["pixels"])


async def _together(family: dict[str, Any], adapter: Any, max_batch: int, sids: list[str] | None = None,
                    prepare: Any = None) -> tuple[dict[str, Any], list[tuple[str, list[str]]], dict[str, Any]]:
    """The streams through one worker (a holder stream first); returns states, batch trace, report."""
    worker = ModelWorker(_config(family), adapter=adapter, max_batch=max_batch)
    trace = trace_batches(worker)
    async with worker:
        holder = await worker.add_stream("holder", _config(family))
        sessions = {sid: await worker.add_stream(sid, _config(family, sid)) for sid in sids or family["streams"]}
        extra = prepare(sessions) if prepare is not None else {}
        states = await _script(family, sessions, Hold(holder), **extra)
        report = worker.report()
    return states, [(kind, ids) for kind, ids in trace if ids != ["holder"]], report


@pytest.fixture(scope="module")
def alone(request: pytest.FixtureRequest) -> Any:
    """``(await alone(family))[stream]``: each stream run by itself through the one-stream path (cached)."""
    cache: dict[str, dict[str, Any]] = {}

    async def run(name: str, sid: str) -> dict[str, Any]:
        family = FAMILIES[name]
        async with StreamSession.from_config(_config(family, sid), adapter=_adapter(request, name)) as session:
            return (await _script(family, {sid: session}, None))[sid]

    async def get(name: str) -> dict[str, Any]:
        if name not in cache:
            cache[name] = {sid: await run(name, sid) for sid in FAMILIES[name]["streams"]}
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(FAMILIES))
async def test_batched_streams_equal_one_at_a_time_and_alone(name, request, alone):
    family = FAMILIES[name]
    adapter = _adapter(request, name)
    batched, trace8, _ = await _together(family, adapter, 8)
    single, trace1, _ = await _together(family, adapter, 1)
    n = len(family["streams"])
    # Every question point is one batch of every stream's question; windows ran as batches of every stream.
    assert [ids for kind, ids in trace8 if kind == "query"] == [list(family["streams"])] * len(family["ask_after"])
    assert [len(ids) for kind, ids in trace8 if kind == "window"] == [n] * family["windows"]
    assert all(len(ids) == 1 for _, ids in trace1) and len(trace1) == n * (family["windows"] + len(family["ask_after"]))
    if name == "tiny":
        assert (await alone(name))["yard"]["stats"]["windows_evicted"] > 0  # eviction inside a batch is covered
    for sid in family["streams"]:
        assert len(batched[sid]["answers"]) == len(family["ask_after"])
        _assert_close(batched[sid], single[sid])
        _assert_close(batched[sid], (await alone(name))[sid])


async def test_a_failing_stream_in_a_batch_does_not_disturb_the_others(request, alone, monkeypatch):
    family = FAMILIES["tiny"]
    real_encode = batch_module.encode_av_many

    adapter = _adapter(request, "tiny")
    second_grids = int(round(2.0 / adapter.spec.second_per_grid))

    def encode(adapter, requests, **kwargs):  # the shared encoder call raises on the bad stream's window 1
        if any(r.frames is not None and r.frames.shape[1:3] == (28, 28) and r.cursor.grids == second_grids
               for r in requests):
            raise RuntimeError("corrupt frame")
        return real_encode(adapter, requests, **kwargs)

    monkeypatch.setattr(batch_module, "encode_av_many", encode)
    bad_windows = [Window(w.t0_s, w.audio, np.resize(w.frames, (len(w.frames), 28, 28, 3)), w.frame_pts_s,
                          duration_s=w.duration_s) for w in _windows(family, "door")]

    def prepare(sessions):
        bad = sessions["bad"]
        compress, begin, ask_for = bad.engine.compress_window, bad.engine.begin_window, bad.ask_for

        def failing_compress(job, encoded):
            if job.window.t0_s == 4.0:
                raise ValueError("compressor lost its plan")
            return compress(job, encoded)

        def failing_begin(window, *prepared):
            if window.t0_s == 6.0:
                raise ValueError("bad window")
            return begin(window, *prepared)

        def failing_text(query):  # its answers' receiver goes away mid-answer (e.g. a closed client)
            ask = ask_for(query)

            def on_text(piece):
                raise RuntimeError("receiver gone")

            ask.on_text = on_text
            return ask

        bad.engine.compress_window, bad.engine.begin_window, bad.ask_for = failing_compress, failing_begin, failing_text
        return {}

    family = {**family, "streams": {"bad": ({}, 0, (28, 28), ()), **family["streams"]}, "given_windows": {"bad": bad_windows}}
    states, trace, report = await _together(family, adapter, 8, prepare=prepare)
    assert all(len(ids) == len(family["streams"]) for _, ids in trace)  # the bad stream was in every batch
    for sid in FAMILIES["tiny"]["streams"]:
        _assert_close(states[sid], (await alone("tiny"))[sid])
        assert report[sid]["windows_failed"] == 0 and report[sid]["last_error"] is None
    assert report["bad"]["windows_failed"] == 3 and report["bad"]["windows_ingested"] == 1  # windows 1, 2, 3 failed
    assert report["bad"]["queries_failed"] == 2 and "receiver gone" in report["bad"]["last_error"]
    assert states["bad"]["answers"] == [("error", "internal")] * 2
    assert states["bad"]["stats"]["kv_tokens"] == sum(p.shape[1] for p in states["bad"]["positions"])


async def test_a_failing_shared_call_is_rerun_one_stream_at_a_time(request, alone, monkeypatch):
    """A batched call that dies halfway (one cache already extended, text already sent): same results.

    Also a packed decode step that fails (it ends every job in it with its error): rerun one at a time.
    """
    family = FAMILIES["tiny"]
    real_forward, real_decode = batch_module.forward_many, batch_module.greedy_decode_many
    failed: collections.Counter[str] = collections.Counter()

    def forward(adapter, items, **kwargs):
        kind = "question" if items[0].logits else "window"
        if len(items) > 1 and not failed[kind]:
            failed[kind] += 1
            real_forward(adapter, items[:1])  # the first stream's cache grew before the call died
            raise RuntimeError("out of memory (simulated)")
        return real_forward(adapter, items, **kwargs)

    def decode(adapter, jobs, **kwargs):
        out = real_decode(adapter, jobs, **kwargs)  # every piece was sent, then the call dies
        if len(jobs) > 1 and not failed["decode"]:
            failed["decode"] += 1
            raise RuntimeError("device lost (simulated)")
        return out

    def packed_step(adapter, items, **kwargs):  # a packed decode step dies: every job in it gets its error
        if len(items) > 1 and failed["decode"] and not failed["step"]:
            failed["step"] += 1
            raise RuntimeError("packed step failed (simulated)")
        return real_step(adapter, items, **kwargs)

    real_step = batch_decode_module.forward_many
    monkeypatch.setattr(batch_module, "forward_many", forward)
    monkeypatch.setattr(batch_module, "greedy_decode_many", decode)
    monkeypatch.setattr(batch_decode_module, "forward_many", packed_step)
    pieces: dict[str, list[str]] = {sid: [] for sid in family["streams"]}

    def prepare(sessions):
        return {"on_text": pieces}

    states, _, report = await _together(family, _adapter(request, "tiny"), 8, prepare=prepare)
    assert failed == {"window": 1, "question": 1, "decode": 1, "step": 1}
    for sid in family["streams"]:
        _assert_close(states[sid], (await alone("tiny"))[sid])
        assert report[sid]["windows_failed"] == report[sid]["queries_failed"] == 0
        # Each answer's text reached its receiver once, although the first batch's was generated twice.
        texts = [text for text, *_ in states[sid]["answers"]]
        assert pieces[sid] and all(texts)
        assert "".join(pieces[sid]).replace(" ", "") == "".join(texts).replace(" ", "")


async def test_questions_go_first_then_windows_by_deadline_one_per_stream_per_batch(tiny25):
    from server_helpers import adapter_for, windows_for

    worker = ModelWorker(stream_config(), adapter=adapter_for(tiny25), max_batch=2)
    trace = trace_batches(worker)
    async with worker:
        holder = await worker.add_stream("holder", stream_config())
        sessions = {sid: await worker.add_stream(sid, stream_config()) for sid in "abc"}
        for sid, seed in zip("abc", (1, 2, 3), strict=True):
            await sessions[sid].push_window(windows_for(2.0, seed)[0])
        await asyncio.gather(*(s.drain() for s in sessions.values()))
        start = len(trace)
        async with Hold(holder):
            for sid, seed in zip("abc", (1, 2, 3), strict=True):  # a's windows are due first, then b's, c's
                for w in windows_for(8.0, seed)[1:]:
                    await sessions[sid].push_window(w)
            question = asyncio.ensure_future(sessions["c"].ask("what now?", 2))
            await until(lambda: sessions["c"].stats()["queries_queued"] == 1)
        await question
        await asyncio.gather(*(s.drain() for s in sessions.values()))
    batches = [(kind, ids) for kind, ids in trace[start:] if ids != ["holder"]]
    # Deadlines a_i < b_i < c_i < a_{i+1}: each batch takes the two earliest heads, one per stream.
    assert batches == [("query", ["c"]), ("window", ["a", "b"]), ("window", ["c", "a"]), ("window", ["b", "c"]),
                       ("window", ["a", "b"]), ("window", ["c"])]
    for session in sessions.values():
        assert [r.index for r in session.reports] == [0, 1, 2, 3]  # each stream's windows in order
    assert [r.timings_ms["batch_windows"] for r in list(sessions["a"].reports)[1:]] == [2.0, 2.0, 2.0]
    assert [r.timings_ms["batch_windows"] for r in list(sessions["c"].reports)[1:]] == [2.0, 2.0, 1.0]


def test_scheduler_batches_one_job_per_stream_up_to_max_batch():
    class Queues:
        def __init__(self) -> None:
            self.queries: collections.deque = collections.deque()
            self.windows: collections.deque = collections.deque()

    def window(t0_s):
        return Window(t0_s, np.zeros(32000, np.float32), np.zeros((0, 0, 0, 3), np.uint8), np.zeros(0), duration_s=2.0)

    scheduler, streams = Scheduler(), {s: Queues() for s in "abcd"}
    for sid in "abcd":
        scheduler.add(sid)
    for i, (sid, deadline) in enumerate([("a", 5.0), ("a", 1.0), ("b", 3.0), ("c", 4.0), ("d", 2.0), ("d", 0.0)]):
        streams[sid].windows.append(PendingWindow(window(float(i)), 0.0, deadline_s=deadline, seq=i))
    streams["a"].queries.extend(["a0", "a1"])
    streams["c"].queries.append("c0")
    assert scheduler.pick_batch(streams, 3) == ("query", ["a", "c"])  # questions first, one per stream
    streams["a"].queries.popleft()
    streams["c"].queries.popleft()
    assert scheduler.pick_batch(streams, 3) == ("query", ["a"])
    streams["a"].queries.popleft()
    # Only each stream's oldest window is a candidate (a: 5.0, d: 2.0), earliest deadline first.
    assert scheduler.pick_batch(streams, 3) == ("window", ["d", "b", "c"])
    assert scheduler.pick_batch(streams, 8) == ("window", ["d", "b", "c", "a"])
    assert scheduler.pick(streams) == ("d", "window")
