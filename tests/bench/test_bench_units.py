"""Pure pieces of the benchmark package: percentiles, modes, row building, targets, memory probes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnizip_stream.bench import targets as tg
from omnizip_stream.bench.env import PeakRss, median, percentiles, rss_mb, trim_memory
from omnizip_stream.bench.modes import ALL_MODES, MODES_BY_NAME, parse_modes
from omnizip_stream.bench.runner import ModeRecord
from omnizip_stream.bench.summary import mode_summary, rows_for


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=200))
def test_percentiles_are_ordered_members_of_the_sample(values):
    p = percentiles(values)
    assert min(values) <= p["p50"] <= p["p95"] <= p["p99"] <= max(values)
    assert {p["p50"], p["p95"], p["p99"]} <= set(values)


def test_percentiles_nearest_rank_and_median():
    values = [float(x) for x in range(1, 101)]
    assert percentiles(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None}
    assert median([3.0, 1.0, 2.0, 10.0]) == 2.5 and median([]) is None


def test_modes_cover_the_issue_and_parse_in_canonical_order():
    names = [m.name for m in ALL_MODES]
    for name in ("full", "omnizip-45", "omnizip-35", "random-45", "random-35", "uniform-45", "uniform-35",
                 "dycoke-45", "dycoke-35", "reprefill", "reprefill+omnizip-45", "reprefill+omnizip-35"):
        assert name in names
    assert MODES_BY_NAME["omnizip-35"].rho_audio == 0.4 and MODES_BY_NAME["omnizip-35"].rho_video == 0.7
    assert MODES_BY_NAME["random-45"].budget == "45" and MODES_BY_NAME["full"].budget is None
    assert MODES_BY_NAME["reprefill+omnizip-35"].streaming_twin == "omnizip-35"
    assert MODES_BY_NAME["reprefill"].streaming_twin == "full"
    assert [m.name for m in parse_modes("reprefill, full,omnizip-35")] == ["full", "omnizip-35", "reprefill"]
    assert len(parse_modes("all")) == len(ALL_MODES)
    with pytest.raises(ValueError, match="unknown mode"):
        parse_modes("full,omnizip-50")
    with pytest.raises(ValueError, match="empty"):
        parse_modes(" , ")


def _window(t_s, total, prefill, evicted=0, kv=1.0, rss=100.0):
    return {"t_s": t_s, "audio_encode_ms": 1.0, "video_encode_ms": 2.0, "compress_ms": 0.5, "prefill_ms": prefill,
            "total_ms": total, "encode_ms": 3.0, "audio_tokens": 50, "audio_kept": 35, "video_tokens": 280,
            "video_kept": 112, "evicted": evicted, "kv_tokens": 100, "kv_mb": kv, "store_mb": 0.5,
            "windows_evicted": 0, "reanchors": 0, "rss_mb": rss}


def _record(mode, ttfts, lengths=(4.0, 8.0), kind="streaming", history=None):
    rec = ModeRecord(mode, kind, info={"rss_start_mb": 90.0})
    # window 1 is a slow warm-up; the cap is reached at window 3 (first eviction)
    rec.windows = [_window(2.0, 500.0, 9.0), _window(4.0, 40.0, 10.0), _window(6.0, 60.0, 12.0, evicted=1, kv=2.0),
                   _window(8.0, 80.0, 14.0, kv=2.0, rss=101.0)]
    for length, ttft, h in zip(lengths, ttfts, history or lengths, strict=True):
        rec.queries.append({"stream_s": length, "reached": True, "ttft_ms_runs": [ttft, ttft + 2, ttft - 1],
                            "total_ms_runs": [ttft + 10] * 3, "answer_tokens": [4] * 3, "prompt_tokens": 120,
                            "history_s": h, "window_range": None})
    return rec


def test_rows_cover_windows_since_the_previous_checkpoint_after_warmup():
    rows = rows_for(_record("omnizip-35", [5.0, 6.0]), window_s=2.0, warmup=1)
    assert [r["stream_s"] for r in rows] == [4.0, 8.0]
    first, second = rows
    assert first["window_ms_p50"] == 40.0  # the 500-ms warm-up window is left out
    assert second["window_ms_p50"] == 60.0 and second["window_ms_p99"] == 80.0
    assert first["ttft_ms"] == 5.0 and first["total_ms"] == 15.0
    assert first["rtf"] == pytest.approx(2.0 / 0.040)
    assert second["tokens_kept_ratio"] == pytest.approx((35 + 112) / 330)
    assert second["rss_delta_mb"] == pytest.approx(11.0)
    summary = mode_summary(_record("omnizip-35", [5.0, 6.0]), 2.0, 1)
    assert summary["rss_flatness"]["cap_reached_s"] == 6.0
    assert summary["rss_flatness"]["drift"] == pytest.approx(0.01)
    assert summary["rss_flatness"]["peak_growth"] == pytest.approx(0.01)
    assert summary["kv_flatness"]["drift"] == 0.0 and summary["kv_flatness"]["peak_growth"] == 0.0


def test_unreached_checkpoint_is_a_row_marked_not_reached():
    rec = _record("full", [5.0], lengths=(4.0,))
    rec.queries.append({"stream_s": 60.0, "reached": False})
    rows = rows_for(rec, 2.0, 1)
    assert rows[-1] == {"mode": "full", "kind": "streaming", "stream_s": 60.0, "reached": False}


def test_reprefill_ratio_passes_fails_and_notes_capped_history():
    rows = rows_for(_record("full", [5.0, 5.0]), 2.0, 1)
    rows += rows_for(_record("reprefill", [60.0, 100.0], kind="reprefill"), 2.0, 1)
    t = tg.reprefill_ratio(rows, ["full", "reprefill"], at_s=8.0)
    assert t["pass"] is True
    pair = t["measured"]["reprefill / full"]
    assert pair["ratio"] == pytest.approx(20.0) and pair["grows_while_history_grows"] is True
    slow = rows_for(_record("full", [5.0, 20.0]), 2.0, 1) + rows[2:]
    assert tg.reprefill_ratio(slow, ["full", "reprefill"], at_s=8.0)["pass"] is False
    # history capped at 4 s: TTFT may stay flat without failing, and the note says why
    flat = rows[:2] + rows_for(_record("reprefill", [60.0, 59.0], kind="reprefill", history=(4.0, 4.0)), 2.0, 1)
    t = tg.reprefill_ratio(flat, ["full", "reprefill"], at_s=8.0)
    assert t["pass"] is True and "flat by construction" in t["note"] and "reprefill 4 s" in t["note"]


def test_reprefill_ratio_without_the_defined_length_is_reported_but_not_judged():
    rows = rows_for(_record("full", [5.0, 50.0]), 2.0, 1)
    rows += rows_for(_record("reprefill", [60.0, 100.0], kind="reprefill"), 2.0, 1)
    t = tg.reprefill_ratio(rows, ["full", "reprefill"], at_s=600.0)  # a quick run: no 10-min checkpoint
    pair = t["measured"]["reprefill / full"]
    assert t["pass"] is None and pair["pass"] is None  # 2x at 8 s would FAIL a >= 10x target: not judged
    assert pair["at_s"] == 8.0 and pair["ratio"] == pytest.approx(2.0)
    assert t["defined_at_s"] == 600.0 and t["target"] == ">= 10x at 10 min"
    assert "not judged: the target is defined at 10 min" in t["note"] and "reprefill 2.0x at 8 s" in t["note"]


def test_ttft_flatness_judges_omnizip_and_reports_after_cap_ratio():
    rows = rows_for(_record("omnizip-35", [5.0, 6.0]), 2.0, 1) + rows_for(_record("full", [5.0, 9.0]), 2.0, 1)
    summaries = [mode_summary(_record(m, [5.0, 6.0]), 2.0, 1) for m in ("omnizip-35", "full")]
    t = tg.ttft_flatness(rows, ["full", "omnizip-35"], summaries, first_s=4.0, last_s=8.0)
    assert t["pass"] is True and t["judged_on"] == ["omnizip-35"]
    assert t["measured"]["full"]["pass"] is False and "full" in t["note"]
    t = tg.ttft_flatness(rows, ["full"], summaries, first_s=4.0, last_s=8.0)
    assert t["pass"] is False


def test_ttft_flatness_names_its_lengths_and_does_not_judge_other_lengths():
    rows = rows_for(_record("omnizip-35", [5.0, 9.0]), 2.0, 1)  # 1.8x between 4 s and 8 s
    summaries = [mode_summary(_record("omnizip-35", [5.0, 9.0]), 2.0, 1)]
    t = tg.ttft_flatness(rows, ["omnizip-35"], summaries)  # defined as 30 min / 1 min
    m = t["measured"]["omnizip-35"]
    assert t["pass"] is None and m["pass"] is None  # n/a, not FAIL
    assert (m["first_s"], m["last_s"]) == (4.0, 8.0) and m["ratio"] == pytest.approx(1.8)
    assert t["lengths_s"] == [4.0, 8.0] and t["defined_at_s"] == [60.0, 1800.0]
    assert "not judged: this run measured 8 s / 4 s" in t["note"] and "30 min / 1 min" in t["note"]
    assert "above 1.3x at these lengths: omnizip-35" in t["note"]


def test_memory_flatness_with_few_windows_after_the_cap_is_not_judged():
    leak = _capped_record([100.0 + 5 * i for i in range(4)])  # the cap window and 4 more: too few
    t = tg.memory_flatness([mode_summary(leak, 2.0, 1)], "rss_flatness")
    assert t["pass"] is None and t["measured"]["omnizip-35"]["drift"] > 0.05
    assert "not judged, only 5 windows after the cap (needs 10)" in t["note"]


def test_memory_flatness_without_cap_is_not_measurable():
    rec = _record("omnizip-45", [5.0, 5.0])
    for w in rec.windows:
        w["evicted"] = 0
    t = tg.memory_flatness([mode_summary(rec, 2.0, 1)], "rss_flatness")
    assert t["pass"] is None and "cap not reached" in t["note"]


def _capped_record(rss_after):
    rec = _record("omnizip-35", [5.0, 5.0])
    rec.windows = [_window(2.0 * (i + 1), 50.0, 10.0, evicted=int(i == 1), rss=100.0 if i < 2 else rss)
                   for i, rss in enumerate([100.0, 100.0, *rss_after])]
    return rec


def test_memory_flatness_judges_drift_and_names_transient_peaks():
    spike = _capped_record([100.0] * 5 + [130.0] + [100.0] * 6)  # one transient +30 % sample
    t = tg.memory_flatness([mode_summary(spike, 2.0, 1)], "rss_flatness")
    assert t["pass"] is True and "transient" in t["note"]
    assert t["measured"]["omnizip-35"]["peak_growth"] == pytest.approx(0.3)
    leak = _capped_record([100.0 + 2 * i for i in range(12)])  # steady growth: +22 % over the stream
    t = tg.memory_flatness([mode_summary(leak, 2.0, 1)], "rss_flatness")
    assert t["pass"] is False and "drifted" in t["note"]
    assert t["measured"]["omnizip-35"]["drift"] > 0.05


def test_prefill_ratio_uses_median_prefill_after_warmup():
    windows = {"full": _record("full", [1.0, 1.0]).windows, "omnizip-35": _record("omnizip-35", [1.0, 1.0]).windows}
    for w in windows["omnizip-35"]:
        w["prefill_ms"] = w["prefill_ms"] * 0.4
    t = tg.prefill_ratio([], windows, warmup=1)
    assert t["measured"] == pytest.approx(0.4) and t["pass"] is True
    assert tg.prefill_ratio([], {"full": windows["full"]}, warmup=1)["pass"] is None


def test_peak_rss_sees_a_large_allocation():
    trim_memory()
    with PeakRss("cpu") as peak:
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        block.sum()
    del block
    assert peak.growth_mb >= 150
    assert rss_mb() > 0
