"""scripts/bench_compress.py --quick runs and writes the documented JSON keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_compress_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_compress.py"), "--quick", "--dtypes", "float32",
         "--threads", "1", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=240,
    )
    report = json.loads(out.read_text())
    for key in ("versions", "config", "threads", "sizes", "results", "saliency", "saliency_memory", "targets",
                "reference_ms_per_window", "load_average_before"):
        assert key in report, key
    assert report["quick"] is True and report["config"]["rho_video"] == 0.6
    assert {"torch", "python"} <= set(report["versions"])
    res = report["results"]["float32"]
    for clip in ("2", "6"):
        off = res["offline"][clip]
        assert off["windows"] == int(clip) // 2 and off["ms_per_clip"] > 0
        assert off["ms_per_window"] == off["ms_per_clip"] / off["windows"]
        assert res["streaming"][clip]["ms_per_window_median"] > 0
    assert res["streaming_flatness_longest_vs_shortest"] > 0
    mem = report["saliency_memory"]
    assert mem["encoder_positions"] == 300 and mem["theoretical_extra_mb"] > 0
    assert "saliency_extra_memory_at_most_64_mb" in report["targets"]


def test_bench_compress_requires_out() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_compress.py")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--out is required" in proc.stderr
