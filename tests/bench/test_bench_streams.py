"""``omnizip bench --streams``: the capacity benchmark, smallest run (tiny model, 1 and 2 streams, 4 s)."""

from __future__ import annotations

import json

import pytest

from omnizip_stream.cli import main


def test_bench_streams_smallest_run_writes_json_table_and_plot(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["bench", "--out", str(out), "--streams", "2,1", "--duration-s", "4", "--question-every-s", "1.5",
                 "--throughput-windows", "2", "--throughput-repeats", "2", "--max-new-tokens", "2", "--json", str(tmp_path / "capacity.json")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((tmp_path / "capacity.json").read_text())
    assert report["config"]["counts"] == [1, 2] and report["model"]["model"] == "tiny"
    assert isinstance(report["batching_available"], bool)
    rows = {r["streams"]: r for r in report["results"]}
    assert set(rows) == {1, 2}
    for n, row in rows.items():
        assert row["windows_per_stream"] == 2 and row["windows_ingested"] == 2 * n
        assert row["questions"] >= n and row["questions_failed"] == 0
        assert 0 < row["ttft_ms"]["p50"] <= row["ttft_ms"]["p95"]
        assert 0 <= row["window_latency_ms"]["p50"] <= row["window_latency_ms"]["p95"]
        assert row["cache_mb_per_stream"] > 0 and isinstance(row["realtime"], bool)
        tp = row["throughput_windows_per_s"]
        assert tp["one_at_a_time"] > 0 and tp["realtime_demand"] == n / 2.0
        assert (tp["batched"] is not None) == report["batching_available"]
        assert len(tp["one_at_a_time_runs"]) == 2 and len(tp["speedups"]) == 2  # alternating pairs
        assert min(tp["speedups"]) <= tp["speedup"] <= max(tp["speedups"])  # their median
    assert set(report["targets"]) == {"realtime_streams", "batched_over_one_at_a_time_at_8", "ttft_p95_16_over_1"}
    assert report["targets"]["ttft_p95_16_over_1"]["pass"] is None  # this run has no 16-stream count
    png = out / "streams.png"
    assert report["plots"] == [str(png)] and png.stat().st_size > 10_000
    table = captured.out.splitlines()
    assert table[0].split()[:3] == ["streams", "real", "time"] and table[2].split()[0] == "1"
    assert any(line.startswith("realtime_streams: ") for line in table)


@pytest.mark.parametrize(("args", "message"), [
    (["--streams", "0,2"], "--streams needs stream counts >= 1"),
    (["--streams", "one"], "--streams must be whole numbers"),
    (["--streams", "1", "--duration-s", "0"], "--duration-s must be positive"),
    (["--streams", "1", "--max-batch", "0"], "--max-batch must be at least 1"),
])
def test_bench_streams_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    assert main(["bench", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
