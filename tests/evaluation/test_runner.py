"""The sweep with the tiny model on generated clips: offline and streaming, resume, media errors."""

from __future__ import annotations

import json

import pytest

from omnizip.registry import available
from omnizip_stream.evaluation import (
    AnswerOptions,
    OfflineAnswerer,
    ResultStore,
    StreamingAnswerer,
    build_settings,
    load_benchmark,
    run_eval,
    summarise,
)

from .conftest import dataset_rows, write_jsonl

OPTIONS = AnswerOptions(max_new_tokens=3, max_frames=None, max_side=None, model_name="tiny")


class Counting:
    """Wraps an answerer and counts the model calls (``answer``) and media preparations."""

    def __init__(self, inner):
        self.inner = inner
        self.path = inner.path
        self.answers: list[tuple[str, str]] = []
        self.prepared: list[str] = []

    def prepare(self, item):
        self.prepared.append(item.item_id)
        return self.inner.prepare(item)

    def answer(self, item, media, setting, prompt):
        self.answers.append((item.item_id, setting.label))
        return self.inner.answer(item, media, setting, prompt)


@pytest.fixture()
def items(tmp_path, clips):
    return load_benchmark(f"jsonl:{write_jsonl(tmp_path / 'mini.jsonl', dataset_rows(clips))}")


def _lines(store):
    with open(store.path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_offline_full_sweep_records_every_unit(tmp_path, items, eval_adapter):
    settings = build_settings(["full", "omnizip", "random", "uniform", "dycoke"], ["0.45", "0.35"], available())
    store = ResultStore(tmp_path / "out")
    answerer = Counting(OfflineAnswerer(eval_adapter, OPTIONS))
    stats = run_eval(items, settings, answerer, store, model="tiny")
    assert stats.total == 4 * 9 and stats.answered == 2 * 9 and stats.errors == 2 * 9 and stats.skipped == 0
    assert len(answerer.answers) == 2 * 9  # broken media never reaches the model
    assert answerer.prepared == ["q1", "q2", "q3", "q4"]  # each clip decoded once for all nine settings
    records = {(r["item_id"], r["method"], r["retention"]): r for r in _lines(store)}
    assert len(records) == 36
    for (item_id, method, retention), r in records.items():
        assert r["path"] == "offline" and r["benchmark"] == "mini" and r["model"] == "tiny"
        if item_id in ("q3", "q4"):
            assert r["status"] == "error" and r["error_kind"] == "media" and r["correct"] is False
            assert ("missing.mp4" if item_id == "q4" else "corrupt.mp4") in r["error"]
            continue
        assert r["status"] == "ok" and isinstance(r["response"], str)
        assert r["pred"] is None or r["pred"] in "ABC"[: r["n_options"]]
        assert r["correct"] == (r["pred"] == r["answer"])
        kept = r["audio_tokens_kept"] + r["video_tokens_kept"]
        total = r["audio_tokens_total"] + r["video_tokens_total"]
        assert r["retention_measured"] == pytest.approx(kept / total) and r["prefill_ms"] > 0
        if method == "identity":
            assert retention == "full" and kept == total
        else:
            assert kept < total and r["audio_tokens_kept"] < r["audio_tokens_total"]
        if item_id == "q2":  # audio only
            assert r["video_tokens_total"] == 0 and r["audio_tokens_total"] == 50
        else:
            assert r["video_tokens_total"] > 0
            if method != "identity":
                assert r["video_tokens_kept"] < r["video_tokens_total"]
    # the 35 % setting prunes at least as much as the 45 % one, method by method
    for method in ("omnizip", "random", "uniform", "dycoke"):
        assert records[("q1", method, "0.35")]["retention_measured"] <= records[("q1", method, "0.45")][
            "retention_measured"]
    summary = summarise(store.records())["paths"]["offline"]
    assert [row["label"] for row in summary["rows"]][:2] == ["full", "omnizip@0.45"]
    assert summary["rows"][0]["benchmarks"]["mini"]["errors"] == 2


def test_resume_skips_finished_units_and_finishes_the_rest(tmp_path, items, eval_adapter):
    settings = build_settings(["full", "omnizip"], ["0.45"], available())
    store = ResultStore(tmp_path / "out")
    first = Counting(OfflineAnswerer(eval_adapter, OPTIONS))
    run_eval(items[:2], settings, first, store, model="tiny")
    assert len(first.answers) == 4
    again = Counting(OfflineAnswerer(eval_adapter, OPTIONS))
    stats = run_eval(items[:2], settings, again, store, model="tiny")
    assert again.answers == [] and again.prepared == [] and stats.skipped == 4 and stats.answered == 0
    # an interrupted run: the last record cut in half, one more missing
    with open(store.path) as fh:
        lines = fh.readlines()
    with open(store.path, "w") as fh:
        fh.writelines(lines[:2])
        fh.write(lines[2][: len(lines[2]) // 2])
    resumed = Counting(OfflineAnswerer(eval_adapter, OPTIONS))
    stats = run_eval(items[:2], settings, resumed, store, model="tiny", warmup=True)
    assert resumed.answers[1:] == [("q2", "full"), ("q2", "omnizip@0.45")]  # the first call is the warm-up
    assert resumed.answers[0] == ("q2", "full") and stats.answered == 2 and stats.skipped == 2
    assert len(store.load()) == 4 and len(_lines(store)) == 4


def test_random_baseline_is_reproducible_across_runs(tmp_path, items, eval_adapter):
    settings = build_settings(["random"], ["0.35"], available())
    a, b = ResultStore(tmp_path / "a"), ResultStore(tmp_path / "b")
    run_eval(items[:1], settings, OfflineAnswerer(eval_adapter, OPTIONS), a, model="tiny")
    run_eval(items[:1], settings, OfflineAnswerer(eval_adapter, OPTIONS), b, model="tiny")
    ra, rb = _lines(a)[0], _lines(b)[0]
    for key in ("response", "audio_tokens_kept", "video_tokens_kept"):
        assert ra[key] == rb[key]


def test_errors_are_finished_unless_retried(tmp_path, items, eval_adapter):
    settings = build_settings(["full"], [], available())
    store = ResultStore(tmp_path / "out")
    run_eval(items[2:], settings, OfflineAnswerer(eval_adapter, OPTIONS), store, model="tiny")
    again = Counting(OfflineAnswerer(eval_adapter, OPTIONS))
    run_eval(items[2:], settings, again, store, model="tiny")
    assert again.prepared == []
    retry = Counting(OfflineAnswerer(eval_adapter, OPTIONS))
    stats = run_eval(items[2:], settings, retry, store, model="tiny", retry_errors=True)
    assert retry.prepared == ["q3", "q4"] and stats.errors == 2 and len(store.load()) == 2


def test_a_failing_unit_is_recorded_and_the_sweep_goes_on(tmp_path, items, eval_adapter):
    class Flaky(OfflineAnswerer):
        def answer(self, item, media, setting, prompt):
            if setting.method == "omnizip":
                raise RuntimeError("boom")
            return super().answer(item, media, setting, prompt)

    settings = build_settings(["full", "omnizip"], ["0.45"], available())
    store = ResultStore(tmp_path / "out")
    stats = run_eval(items[:1], settings, Flaky(eval_adapter, OPTIONS), store, model="tiny")
    by_method = {r["method"]: r for r in _lines(store)}
    assert stats.answered == 1 and stats.errors == 1
    assert by_method["omnizip"]["error_kind"] == "internal" and "boom" in by_method["omnizip"]["error"]
    assert by_method["identity"]["status"] == "ok"


def test_context_overflow_is_an_item_error(tmp_path, items, eval_adapter):
    long_item = items[0].__class__(**{**items[0].__dict__, "question": "why " * 40000, "item_id": "long"})
    store = ResultStore(tmp_path / "out")
    stats = run_eval([long_item], build_settings(["full"], [], available()),
                     OfflineAnswerer(eval_adapter, OPTIONS), store, model="tiny")
    record = _lines(store)[0]
    assert stats.errors == 1 and record["error_kind"] == "context" and "positions" in record["error"]


def test_streaming_sweep_replays_through_the_session(tmp_path, items, eval_adapter):
    settings = build_settings(["full", "omnizip", "uniform"], ["0.45"], available())
    store = ResultStore(tmp_path / "out")
    answerer = Counting(StreamingAnswerer(eval_adapter, OPTIONS))
    stats = run_eval(items, settings, answerer, store, model="tiny")
    # the corrupt file fails on its first replay, and its other settings are not tried again
    assert stats.answered == 6 and stats.errors == 6 and len(answerer.answers) == 6 + 1
    records = {(r["item_id"], r["method"]): r for r in _lines(store)}
    for (item_id, method), r in records.items():
        assert r["path"] == "streaming"
        if item_id in ("q3", "q4"):
            assert r["status"] == "error" and r["error_kind"] == "media"
            continue
        assert r["x_windows"] == 1 and r["x_video_dropped"] == 0 and r["x_window_range"] == [0, 0]
        assert r["prefill_ms"] == pytest.approx(r["x_window_prefill_ms"] + r["x_question_prefill_ms"])
        kept = r["audio_tokens_kept"] + r["video_tokens_kept"]
        total = r["audio_tokens_total"] + r["video_tokens_total"]
        assert (kept == total) if method == "identity" else (kept < total)
        assert r["audio_tokens_total"] == 50
    offline_like = records[("q1", "identity")]
    assert offline_like["video_tokens_total"] > 0
