"""Normalised average, summaries, the Table-1 Markdown, sweep settings, the JSONL store and the progress line."""

from __future__ import annotations

import io
import json

import pytest

from omnizip.registry import available
from omnizip_stream.evaluation import (
    Progress,
    ResultStore,
    StoreError,
    build_settings,
    markdown,
    normalised_average,
    summarise,
)
from omnizip_stream.evaluation.settings import parse_retention

# ---------------------------------------------------------------- normalised average (Table 1)
FULL = {"avut": 64.5, "videomme": 66.0, "shortvid": 70.5}


@pytest.mark.parametrize("row,expected", [
    ({"avut": 63.0, "videomme": 66.3, "shortvid": 69.9}, 99.1),  # OmniZip 45 %: paper 99.1 %
    ({"avut": 62.0, "videomme": 65.5, "shortvid": 68.5}, 97.5),  # DyCoke (V&A): paper 97.5 %
    ({"avut": 64.5, "videomme": 66.0, "shortvid": 70.5}, 100.0),
])
def test_normalised_average_reproduces_table1(row, expected):
    assert round(100 * normalised_average(row, FULL), 1) == expected


def test_normalised_average_exact_and_skips_missing_entries():
    assert normalised_average({"a": 0.5, "b": 0.3}, {"a": 0.5, "b": 0.6}) == pytest.approx((1.0 + 0.5) / 2)
    # FastV's OOM entry is left out of its mean, as in the paper
    assert normalised_average({"avut": 58.4, "videomme": None, "shortvid": 68.0}, FULL) == pytest.approx(
        (58.4 / 64.5 + 68.0 / 70.5) / 2)
    assert normalised_average({"a": 0.4, "b": 0.2}, {"a": 0.0, "b": 0.4}) == pytest.approx(0.5)  # full 0: skipped
    assert normalised_average({"a": 0.4}, {"b": 0.4}) is None
    assert normalised_average({}, {}) is None


# ---------------------------------------------------------------- summaries
def _rec(bench, item, method, retention, correct, *, path="offline", status="ok", pred="A", task="t",
         a=(100, 100), v=(100, 100), prefill=10.0):
    rec = {"benchmark": bench, "item_id": item, "method": method, "retention": retention, "path": path,
           "status": status, "correct": correct, "pred": pred if status == "ok" else None, "task": task,
           "audio_tokens_total": a[0], "audio_tokens_kept": a[1], "video_tokens_total": v[0],
           "video_tokens_kept": v[1], "prefill_ms": prefill}
    rec["retention_measured"] = (a[1] + v[1]) / (a[0] + v[0]) if status == "ok" else None
    return rec


def _records():
    recs = []
    for i, ok in enumerate([True, True, True, False]):
        recs.append(_rec("b1", f"i{i}", "identity", "full", ok, task="x" if i < 2 else "y", prefill=20.0))
    for i, ok in enumerate([True, False, False, False]):
        status = "error" if i == 3 else "ok"
        recs.append(_rec("b1", f"i{i}", "omnizip", "0.45", ok, status=status, pred=None if i == 2 else "B",
                         task="x" if i < 2 else "y", a=(100, 70), v=(300, 100), prefill=5.0))
    recs += [_rec("b2", "j0", "identity", "full", True), _rec("b2", "j1", "identity", "full", False),
             _rec("b2", "j0", "omnizip", "0.45", True, a=(50, 40), v=(50, 10)),
             _rec("b2", "j1", "omnizip", "0.45", True, a=(50, 40), v=(50, 10))]
    recs.append(_rec("b1", "i0", "identity", "full", False, path="streaming"))
    return recs


def test_summary_accuracy_tasks_retention_and_norm_avg():
    summary = summarise(_records())
    off = summary["paths"]["offline"]
    assert off["benchmarks"] == ["b1", "b2"]
    full, omni = off["rows"]
    assert full["label"] == "full" and omni["label"] == "omnizip@0.45"
    assert full["benchmarks"]["b1"]["accuracy"] == 0.75 and full["benchmarks"]["b2"]["accuracy"] == 0.5
    b1 = omni["benchmarks"]["b1"]
    assert b1["accuracy"] == 0.25 and b1["n"] == 4 and b1["errors"] == 1 and b1["unanswered"] == 1
    assert b1["tasks"]["x"]["accuracy"] == 0.5 and b1["tasks"]["y"]["accuracy"] == 0.0
    assert b1["retention_measured"] == pytest.approx(170 / 400)  # pooled over ok items only
    assert b1["retention_audio"] == pytest.approx(0.7) and b1["retention_video"] == pytest.approx(1 / 3)
    assert omni["normalised_average"] == pytest.approx((0.25 / 0.75 + 1.0 / 0.5) / 2)
    assert full["normalised_average"] == pytest.approx(1.0)
    overall = omni["overall"]
    assert overall["retention_measured"] == pytest.approx((170 * 3 + 50 * 2) / (400 * 3 + 100 * 2))
    assert overall["retention_per_sample_mean"] == pytest.approx((170 / 400 * 3 + 0.5 * 2) / 5)
    assert overall["prefill_ms_mean"] == pytest.approx(5.0 * 3 / 5 + 10.0 * 2 / 5)
    # the streaming path is normalised against its own full row
    assert summary["paths"]["streaming"]["rows"][0]["normalised_average"] is None  # full accuracy 0


def test_markdown_is_shaped_like_table1_and_marks_partial_rows():
    recs = _records()
    recs = [r for r in recs if not (r["benchmark"] == "b2" and r["method"] == "omnizip" and r["item_id"] == "j1")]
    text = markdown(summarise(recs), model="m", notice="random weights")
    assert "## Table 1 — offline path" in text and "## Table 1 — streaming path" in text
    assert "| method | nominal | retention | prefill ms | b1 | b2 | norm. avg |" in text
    assert "| full tokens | 100 % | 100.0 | 17 | 75.0 | 50.0 | 100.0 % |" in text
    omni_line = next(line for line in text.splitlines() if line.startswith("| omnizip | 0.45 |"))
    assert "| 25.0 | 100.0* |" in omni_line  # b2 evaluated on fewer items than full
    assert "not comparable" in text and "> random weights" in text
    assert "### b1 (offline) — per task" in text and "| omnizip@0.45 | 50.0 | 0.0 | 25.0 | 4 | 1 | 1 |" in text


# ---------------------------------------------------------------- settings
def test_settings_full_once_then_retention_by_method():
    settings = build_settings(["full", "omnizip", "random", "uniform", "dycoke"], ["0.45", "0.35"], available())
    assert [s.label for s in settings] == [
        "full", "omnizip@0.45", "random@0.45", "uniform@0.45", "dycoke@0.45",
        "omnizip@0.35", "random@0.35", "uniform@0.35", "dycoke@0.35"]
    assert settings[0].method == "identity"
    assert (settings[1].rho_audio, settings[1].rho_video) == (0.3, 0.6)
    assert (settings[5].rho_audio, settings[5].rho_video) == (0.4, 0.7)
    assert [s.label for s in build_settings(["identity"], ["0.45"], available())] == ["full"]
    assert parse_retention("0.25/0.8") == ("0.25/0.8", 0.25, 0.8)
    assert parse_retention(".45") == ("0.45", 0.3, 0.6)


@pytest.mark.parametrize("methods,retentions,needle", [
    (["omnizip", "magic"], ["0.45"], "unknown method 'magic'"),
    (["omnizip"], ["0.5"], "unknown retention '0.5'"),
    (["omnizip"], ["1.2/0.3"], "unknown retention"),
    (["omnizip", "omnizip"], ["0.45"], "listed twice"),
    (["omnizip"], ["0.45", "0.45"], "listed twice"),
    (["omnizip"], [], "--retention is empty"),
    ([], ["0.45"], "--methods is empty"),
])
def test_settings_reject_bad_values(methods, retentions, needle):
    with pytest.raises(ValueError, match=needle):
        build_settings(methods, retentions, available())


# ---------------------------------------------------------------- store
def _key_rec(item, **extra):
    return {"benchmark": "b", "item_id": item, "method": "omnizip", "retention": "0.45", "path": "offline", **extra}


def test_store_resumes_last_record_wins_and_tolerates_a_cut_last_line(tmp_path):
    store = ResultStore(tmp_path / "out")
    store.append(_key_rec("a", status="error"))
    store.append(_key_rec("b", status="ok"))
    store.append(_key_rec("a", status="ok"))
    with open(store.path, "a") as fh:
        fh.write('{"benchmark": "b", "item_id": "c", "meth')  # killed mid-write
    fresh = ResultStore(tmp_path / "out")
    loaded = fresh.load()
    assert len(loaded) == 2 and loaded[("b", "a", "omnizip", "0.45", "offline")]["status"] == "ok"
    fresh.append(_key_rec("c", status="ok"))
    assert len(ResultStore(tmp_path / "out").load()) == 3  # the new record did not glue onto the cut line


def test_store_damage_in_the_middle_is_an_error(tmp_path):
    store = ResultStore(tmp_path)
    store.append(_key_rec("a"))
    with open(store.path, "a") as fh:
        fh.write("garbage\n")
    store.append(_key_rec("b"))
    with pytest.raises(StoreError, match=r"results.jsonl:2: damaged"):
        store.load()


def test_store_refuses_results_of_other_settings(tmp_path):
    store = ResultStore(tmp_path)
    store.check_config({"model": "other", "max_new_tokens": 16}, ["model", "max_new_tokens"])
    store.check_config({"model": "tiny", "max_new_tokens": 16, "device": "cpu"}, ["model", "max_new_tokens"])
    store.append(_key_rec("a"))  # results exist from here on: the settings are fixed
    store.check_config({"model": "tiny", "max_new_tokens": 16, "device": "cuda"}, ["model", "max_new_tokens"])
    with pytest.raises(StoreError, match="max_new_tokens=16"):
        store.check_config({"model": "tiny", "max_new_tokens": 32}, ["model", "max_new_tokens"])
    assert json.loads((tmp_path / "config.json").read_text())["device"] == "cuda"
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a folder"):
        ResultStore(tmp_path / "file")


# ---------------------------------------------------------------- progress
class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_progress_eta_ignores_resumed_units_and_prints_lines():
    clock, out = _Clock(), io.StringIO()
    progress = Progress(10, stream=out, clock=clock, min_interval_s=0.0, label="t")
    progress.skip(4)
    assert progress.eta_s() is None
    clock.t += 2.0
    progress.advance("a")
    clock.t += 2.0
    progress.advance("b", error=True)
    assert progress.eta_s() == pytest.approx(2.0 * 4)  # 2 s per unit of this run, 4 left
    last = out.getvalue().strip().splitlines()[-1]
    assert last.startswith("[t] 6/10  60%") and "0.50/s" in last and "ETA 0:08" in last and "1 errors" in last
    assert last.endswith("b")


def test_progress_throttles_but_always_prints_the_end():
    clock, out = _Clock(), io.StringIO()
    progress = Progress(3, stream=out, clock=clock, min_interval_s=30.0)
    for _ in range(3):
        progress.advance()
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("[eval] 3/3 100%")
