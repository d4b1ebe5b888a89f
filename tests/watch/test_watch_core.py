"""Standing questions: one batched yes/no forward over the stream's cache, debounce, cooldown, the log."""

from __future__ import annotations

import asyncio
import json
import types

import pytest
import torch
from watch_helpers import QUESTIONS, adapter_for, engine_with_windows, stream_config, windows_for

from omnizip_stream.server.scheduler import Scheduler
from omnizip_stream.session import StreamSession
from omnizip_stream.watch.evaluate import YesNoTokens, evaluate_yes_no, yes_no_text
from omnizip_stream.watch.log import AlertLog
from omnizip_stream.watch.registry import StreamWatches
from omnizip_stream.watch.spec import WatchError, WatchSpec, WatchState, watch_spec_from_mapping


def _snapshot(engine):
    return [(layer.keys.clone(), layer.values.clone()) for layer in engine.cache.cache.layers]


def test_batched_evaluation_equals_one_at_a_time_and_leaves_the_cache_bit_identical(tiny25):
    engine = engine_with_windows(tiny25)
    tokens = YesNoTokens.from_tokenizer(engine.adapter.tokenizer)
    before, stored = _snapshot(engine), engine.cache.stored_tokens
    batched = evaluate_yes_no(engine, QUESTIONS, tokens)
    alone = evaluate_yes_no(engine, QUESTIONS, tokens, batched=False)
    ids: dict = {}
    first, cached = evaluate_yes_no(engine, QUESTIONS, tokens, ids_cache=ids), evaluate_yes_no(
        engine, QUESTIONS, tokens, ids_cache=ids)  # the second with the ids rendered once
    assert len(ids) == len(QUESTIONS) and first == batched and cached == pytest.approx(batched, abs=1e-6)
    # The reference: the engine's own question path (append to the cache, read, restore).
    reference = [tokens.probability(engine.question_logits(yes_no_text(q))[0]) for q in QUESTIONS]
    after = _snapshot(engine)
    assert batched == pytest.approx(alone, abs=1e-5)
    assert batched == pytest.approx(reference, abs=1e-5)
    assert engine.cache.stored_tokens == stored
    assert all(torch.equal(k0, k1) and torch.equal(v0, v1) for (k0, v0), (k1, v1) in zip(before, after, strict=True))
    assert all(0.0 < p < 1.0 for p in batched)


def test_the_batch_is_one_forward(tiny25, monkeypatch):
    engine = engine_with_windows(tiny25, seconds=2.0)
    calls = []
    original = engine.adapter.forward_rows
    monkeypatch.setattr(engine.adapter, "forward_rows", lambda *a, **k: calls.append(1) or original(*a, **k))
    evaluate_yes_no(engine, QUESTIONS, YesNoTokens.from_tokenizer(engine.adapter.tokenizer))
    assert len(calls) == 1


def test_yes_no_tokens_are_the_first_tokens_of_the_spellings(tiny25):
    tokens = YesNoTokens.from_tokenizer(tiny25.tokenizer)
    tok = tiny25.tokenizer
    assert tok("Yes", add_special_tokens=False)["input_ids"][0] in tokens.yes
    assert tok("no", add_special_tokens=False)["input_ids"][0] in tokens.no
    assert not set(tokens.yes) & set(tokens.no)


def _state(**kw) -> WatchState:
    return WatchState(WatchSpec(question="q", id="w1", **kw))


def test_fires_after_exactly_k_consecutive_positives():
    state = _state(threshold=0.5, debounce=3)
    probs = [0.6, 0.7, 0.4, 0.6, 0.6, 0.6, 0.9, 0.9, 0.9]
    fired = [i for i, p in enumerate(probs) if state.observe(p, t_s=2.0 * (i + 1))]
    assert fired == [5, 8]  # the run broken at 2; three in a row at 3-5; the run restarts after firing


def test_threshold_zero_makes_every_evaluation_positive_and_cooldown_holds():
    state = _state(threshold=0.0, debounce=1, cooldown_s=4.0)
    fired = [t for t in (2.0, 4.0, 6.0, 8.0, 10.0, 12.0) if state.observe(0.0, t_s=t)]
    assert fired == [2.0, 6.0, 10.0]


@pytest.mark.parametrize("item, code, words", [
    ({"question": ""}, "bad_request", "non-empty question"),
    ({"question": "x" * 301}, "too_long", "at most 300"),
    ({"question": "dog?", "threshold": 1.5}, "bad_request", "threshold"),
    ({"question": "dog?", "threshold": "high"}, "bad_request", "threshold"),
    ({"question": "dog?", "debounce": 0}, "bad_request", "debounce"),
    ({"question": "dog?", "every_windows": 1.5}, "bad_request", "every_windows"),
    ({"question": "dog?", "cooldown_s": -1}, "bad_request", "cooldown_s"),
    ({"question": "dog?", "colour": "red"}, "bad_request", "colour"),
    ({"question": "dog?", "mode": "score"}, "bad_request", "mode"),
])
def test_bad_registrations_are_one_line_errors(item, code, words):
    with pytest.raises(WatchError) as info:
        watch_spec_from_mapping(item)
    assert info.value.code == code and words in str(info.value) and "\n" not in str(info.value)


def test_too_many_and_duplicate_ids_are_refused():
    watches = StreamWatches("door", max_watches=2)
    assert watches.add(WatchSpec("a?")).spec.id == "w1"
    watches.add(WatchSpec("b?", id="bark"))
    with pytest.raises(WatchError, match="at most 2") as info:
        watches.add(WatchSpec("c?"))
    assert info.value.code == "too_many"
    watches.remove("w1")
    with pytest.raises(WatchError) as info:
        watches.add(WatchSpec("c?", id="bark"))
    assert info.value.code == "conflict"


def _report(index: int):
    return types.SimpleNamespace(index=index, t0_s=2.0 * index, t1_s=2.0 * index + 2)


def test_the_period_stretches_while_the_stream_is_behind_and_is_counted():
    watches = StreamWatches("door")
    watches.add(WatchSpec("a?", every_windows=1))
    due = []
    for i, backlog in enumerate([0, 0, 3, 3, 3, 3, 3, 3, 0]):
        watches.window_done(_report(i), backlog=backlog, landed_at=0.0)
        due.append(bool(watches.due))
        if watches.due:
            watches.due = []
            for state in watches._watches.values():
                state.windows_since_eval = 0
    # behind: each evaluation doubles the period (1, 2, 4 windows); caught up: every window again
    assert due == [True, True, True, False, True, False, False, False, True]
    assert watches.counters["watch_deferred"] == 4


def test_the_scheduler_runs_standing_questions_after_users_questions_and_before_windows():
    from collections import deque

    pending = types.SimpleNamespace(deadline_s=0.0, seq=0)
    a = types.SimpleNamespace(queries=deque(), windows=deque([pending]), watch_due=True)
    b = types.SimpleNamespace(queries=deque(["q"]), windows=deque(), watch_due=False)
    sched = Scheduler()
    sched.add("a")
    sched.add("b")
    assert sched.pick({"a": a, "b": b}) == ("b", "query")
    b.queries.clear()
    assert sched.pick({"a": a, "b": b}) == ("a", "watch")
    a.watch_due = False
    assert sched.pick({"a": a, "b": b}) == ("a", "window")


async def _run_stream(tiny25, specs, seconds, tmp_path, **cfg):
    async with StreamSession.from_config(stream_config(**cfg), adapter=adapter_for(tiny25)) as session:
        session.watches.log = AlertLog(tmp_path, "default")
        for spec in specs:
            session.watches.add(watch_spec_from_mapping(spec), check_question=session.engine.question_ids)
        alerts = []
        session.watches.listeners.append(alerts.append)
        for window in windows_for(seconds):  # one at a time: never behind, so no stretching
            await session.push_window(window)
            await session.drain()
        await asyncio.sleep(0)  # the listeners' calls posted by the model thread
        return alerts, session.stats(), session.watches.list()


def test_a_stream_fires_from_measured_probabilities_logs_before_delivery_and_honours_cooldown(tiny25, tmp_path):
    specs = [
        {"id": "always", "question": "Is a dog barking?", "threshold": 0.0, "debounce": 2},
        {"id": "cool", "question": "Is it dark?", "threshold": 0.0, "debounce": 1, "cooldown_s": 4},
        {"id": "never", "question": "Is the kettle whistling?", "threshold": 1.0},
        {"id": "slow", "question": "Is someone in the kitchen?", "threshold": 0.0, "every_windows": 3},
    ]
    alerts, stats, listing = asyncio.run(_run_stream(tiny25, specs, 12.0, tmp_path))
    by = {}
    for alert in alerts:
        by.setdefault(alert["watch_id"], []).append(alert["window"])
    assert by == {"always": [1, 3, 5], "cool": [0, 2, 4], "slow": [2, 5]}
    assert stats["watch_evaluations"] == 6 * 3 + 2 and stats["watch_forwards"] == 6
    assert stats["watch_alerts"] == len(alerts) == 8
    logged = [json.loads(line) for line in (tmp_path / "default.alerts.jsonl").read_text().splitlines()]
    assert [a["seq"] for a in logged] == list(range(1, 9))
    assert [(a["watch_id"], a["window"]) for a in logged] == [(a["watch_id"], a["window"]) for a in alerts]
    first = alerts[0]
    assert first["stream_id"] == "default" and first["question"] == "Is it dark?"
    assert first["window_time_range_s"] == [0.0, 2.0] and first["time_range_s"][1] == 2.0 and first["ts"] > 0
    probs = {w["id"]: w["last_probability"] for w in listing}
    assert 0.0 < probs["never"] < 1.0  # measured; a threshold of 1.0 sits above any of them

    # Thresholds from the measured probability: just above it never fires, at it fires every time.
    p = probs["always"]
    spec_hi = {"id": "hi", "question": "Is a dog barking?", "threshold": min(1.0, p + 0.05)}
    spec_lo = {"id": "lo", "question": "Is a dog barking?", "threshold": max(0.0, p - 0.05)}
    alerts, _, _ = asyncio.run(_run_stream(tiny25, [spec_hi, spec_lo], 4.0, tmp_path / "b"))
    assert {a["watch_id"] for a in alerts} == {"lo"} and len(alerts) == 2


def test_a_description_is_generated_when_asked(tiny25, tmp_path):
    spec = {"question": "Is a dog barking?", "threshold": 0.0, "describe": True}
    alerts, stats, _ = asyncio.run(_run_stream(tiny25, [spec], 2.0, tmp_path, max_new_tokens=4))
    assert len(alerts) == 1 and isinstance(alerts[0]["description"], str)
    assert stats["watch_describe_failed"] == 0


def test_a_too_long_question_for_the_stream_is_refused(tiny25, tmp_path):
    async def main():
        async with StreamSession.from_config(stream_config(max_question_tokens=40),
                                             adapter=adapter_for(tiny25)) as session:
            with pytest.raises(WatchError) as info:
                session.watches.add(watch_spec_from_mapping("Is there a large brown dog barking at the door?"),
                                    check_question=session.engine.question_ids)
            assert info.value.code == "too_long" and "\n" not in str(info.value)
            await session.push_window(windows_for(2.0)[0])
            await session.drain()
            assert session.stats()["windows_ingested"] == 1

    asyncio.run(main())


def test_a_users_question_waiting_after_a_window_runs_before_the_standing_questions(tiny25):
    import threading

    async def main():
        async with StreamSession.from_config(stream_config(), adapter=adapter_for(tiny25)) as session:
            session.watches.add(WatchSpec("Is a dog barking?", threshold=0.0))
            trace = []
            session.worker.on_job = lambda sid, kind: trace.append(kind)
            gate, entered = threading.Event(), threading.Event()
            original = session.engine.ingest

            def gated(window, *prepared):
                entered.set()
                gate.wait(10)
                return original(window, *prepared)

            first, second = windows_for(4.0)
            await session.push_window(first)
            await session.drain()
            session.engine.ingest = gated
            await session.push_window(second)
            await asyncio.to_thread(entered.wait, 10)
            ask = asyncio.ensure_future(session.ask("What is there?"))
            for _ in range(10000):
                if session.queries:
                    break
                await asyncio.sleep(0)
            gate.set()
            await ask
            await session.drain()
            return trace, session.stats()

    trace, stats = asyncio.run(main())
    # window 1 was being ingested when the question came: the question runs before window 1's standing question
    assert trace == ["window", "watch", "window", "query", "watch"]
    assert stats["watch_evaluations"] == 2 and stats["windows_ingested"] == 2
