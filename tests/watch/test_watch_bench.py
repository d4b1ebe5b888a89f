"""``omnizip bench --watches``: runs end to end on the tiny model and reports every number it promises."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_watches_reports_costs_latency_and_streams(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "omnizip_stream.cli", "bench", "--watches", "0,4", "--out", str(tmp_path),
         "--model", "tiny", "--threads", "1", "--watch-windows", "4", "--warmup-windows", "1",
         "--watch-live-windows", "2", "--max-side", "112"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "watches.json").read_text())
    assert set(report["costs"]) == {"0", "4"}
    assert report["costs"]["4"]["watch_ms_mean"] > 0 and report["costs"]["4"]["forwards"] == 4
    latency = report["alert_latency"]
    assert latency["alerts_received"] == latency["alerts_expected"] == 8 and latency["latency_ms_p95"] > 0
    assert report["streams_sustained_with_4"] >= 0 and "alert latency p95 <= one window" in out.stdout


def test_bench_watches_bad_list_is_a_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "omnizip_stream.cli", "bench", "--watches", "a,b", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "--watches" in out.stderr
