"""The listen-before-you-look benchmark rows (tiny model, smallest settings): keys and accounting, no timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from omnizip_stream.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_bench_prefill_replays_stream_windows_for_lbyl(tmp_path):
    out = tmp_path / "prefill.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_prefill.py"), "--quick", "--clips", "4", "--methods",
         "full,omnizip-35,omnizip-35-lbyl", "--lbyl-axes", "temporal", "--repeats", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert {r["method"] for r in report["results"]} == {"full", "omnizip-35"}  # offline rows as before
    rows = {r["method"]: r for r in report["stream_windows"]}
    assert set(rows) == {"full", "omnizip-35", "omnizip-35-lbyl[temporal]"}
    for r in rows.values():
        assert r["windows"] == 2 and len(r["per_window"]) == 2
        for key in ("video_encode_ms", "video_patches", "total_ms"):
            assert r[f"{key}_p50"] > 0 and r[f"{key}_clip"] > 0 and r[f"{key}_vs_full"] > 0, key
    assert rows["omnizip-35"]["video_patches_vs_full"] == 1.0  # plain OmniZip encodes every patch
    assert rows["omnizip-35-lbyl[temporal]"]["video_patches_vs_full"] == 0.5  # one grid step of two
    # the same video budget of the same nominal tokens
    assert rows["omnizip-35-lbyl[temporal]"]["video_kept_ratio"] == rows["omnizip-35"]["video_kept_ratio"]
    targets = report["lbyl_targets"]
    assert targets["tiny_omnizip-35_4s_patches"]["measured"] == 1.0
    assert targets["tiny_omnizip-35-lbyl_4s_patches"]["pass"] is None  # no row with both axes in this run
    assert "omnizip-35-lbyl[temporal]: per window p50 vision" in proc.stdout


def test_omnizip_bench_runs_the_lbyl_mode(tmp_path, capsys):
    code = main(["bench", "--out", str(tmp_path), "--stream-minutes", "0.1", "--modes", "omnizip-35,omnizip-35-lbyl",
                 "--query-repeats", "1", "--no-plots", "--threads", "2", "--warmup-windows", "1"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "results.json").read_text())
    rows = {r["mode"]: r for r in report["results"]}
    assert set(rows) == {"omnizip-35", "omnizip-35-lbyl"}
    for row in rows.values():
        assert row["window_ms_p50"] > 0 and row["video_patches_p50"] > 0
    assert rows["omnizip-35-lbyl"]["video_patches_p50"] < rows["omnizip-35"]["video_patches_p50"]
    summaries = {s["mode"]: s for s in report["modes"]}
    assert summaries["omnizip-35-lbyl"]["video_patches_total"] < summaries["omnizip-35"]["video_patches_total"]
    assert summaries["omnizip-35-lbyl"]["video_kept_ratio"] == summaries["omnizip-35"]["video_kept_ratio"]
