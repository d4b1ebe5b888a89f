"""``omnizip bench --watches``: runs end to end on the tiny model and reports every number it promises."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_watches_reports_costs_latency_and_streams(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "omnizip_stream.cli", "bench", "--watches", "0,4", "--out", str(tmp_path),
         "--model", "tiny", "--threads", "1", "--watch-windows", "4", "--warmup-windows", "1",
         "--watch-live-windows", "2", "--max-side", "112",
         "--watch-sustain-windows", "2", "--watch-sustain-range", "1:2", "--watch-sustain-trials", "2"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "watches.json").read_text())
    assert set(report["costs"]) == {"0", "4"}
    assert report["costs"]["4"]["watch_ms_mean"] > 0 and report["costs"]["4"]["forwards"] == 4
    latency = report["alert_latency"]
    assert latency["alerts_received"] == latency["alerts_expected"] == 8 and latency["latency_ms_p95"] > 0
    assert "alert latency p95 <= one window" in out.stdout
    # streams sustained with 4 questions each: measured with live streams (the estimate kept, labelled)
    search = report["sustained_search"]
    assert report["streams_sustained_with_4_estimate"] >= 0 and search["estimate"] == report[
        "streams_sustained_with_4_estimate"]
    rows = {row["streams"]: row for row in search["counts"]}
    assert rows and set(rows) <= {1, 2} and len(rows) <= 2
    sustained = [n for n, row in rows.items() if row["sustained"]]
    assert report["streams_sustained_with_4"] == search["measured"] == max(sustained, default=0)
    for n, row in rows.items():
        assert row["windows_ingested"] == 2 * n or not row["sustained"]
        if row["sustained"]:  # in real time AND every window's 4 questions evaluated
            assert row["streams_sustained"] == n and row["video_dropped"] == 0 and row["watch_deferred"] == 0
            assert row["watch_evaluations"] == row["watch_evaluations_expected"] == 4 * 2 * n
    assert "streams sustained in real time with 4 watches each:" in out.stdout and "measured" in out.stdout


def test_bench_watches_bad_list_is_a_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "omnizip_stream.cli", "bench", "--watches", "a,b", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "--watches" in out.stderr


def test_bench_watches_bad_sustain_range_is_a_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "omnizip_stream.cli", "bench", "--watches", "4", "--out",
                          str(tmp_path), "--watch-sustain-range", "8:2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "--watch-sustain-range" in out.stderr


def test_the_sustained_search_steps_from_the_estimate_then_bisects():
    from omnizip_stream.bench.watches import next_count

    assert next_count({16: True}, 1, 64) == 20  # up a quarter
    assert next_count({16: True, 20: False}, 1, 64) == 18  # then between the best and the first failure
    assert next_count({16: True, 20: False, 18: True}, 1, 64) == 19
    assert next_count({16: True, 20: False, 18: True, 19: False}, 1, 64) is None  # 18: bracketed
    assert next_count({16: False}, 1, 64) == 12 and next_count({16: False, 12: False}, 1, 64) == 9
    assert next_count({2: False, 1: False}, 1, 64) is None  # nothing sustained, even 1
    assert next_count({64: True}, 1, 64) is None  # the top of the range
    assert next_count({3: True}, 1, 64) == 4 and next_count({1: False}, 1, 64) is None
