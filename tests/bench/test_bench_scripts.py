"""The benchmark entry points at their smallest settings with the tiny model: files, keys, exit codes.

No timing is asserted: only that each run writes what it documents, with consistent accounting.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from omnizip_stream.cli import main

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROW_KEYS = ("mode", "stream_s", "ttft_ms", "total_ms", "window_ms_p50", "window_ms_p95", "kv_mb", "rss_mb",
            "tokens_kept_ratio")


def _script(name: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def stream_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("bench_stream")
    proc = _script("bench_stream.py", "--out", str(out), "--stream-minutes", "0.1,0.2",
                   "--modes", "full,omnizip-35,uniform-35,reprefill,reprefill+omnizip-35", "--cache-max-tokens", "2048",
                   "--query-repeats", "1", "--warmup-windows", "1")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads((out / "results.json").read_text()), proc


def test_bench_stream_writes_json_markdown_and_plots(stream_run):
    out, report, proc = stream_run
    for key in ("results", "modes", "targets", "device", "versions", "config", "environment", "timeseries",
                "definitions", "notes", "model"):
        assert key in report, key
    assert report["device"] == "cpu" and {"torch", "transformers", "python"} <= set(report["versions"])
    assert report["config"]["stream_config"]["cache_max_tokens"] == 2048
    assert report["model"]["random_weights"] is True
    rows = report["results"]
    assert {(r["mode"], r["stream_s"]) for r in rows} == {
        (m, s) for m in ("full", "omnizip-35", "uniform-35", "reprefill", "reprefill+omnizip-35") for s in (6.0, 12.0)}
    for row in rows:
        assert row["reached"] is True
        for key in ROW_KEYS:
            assert key in row, key
        assert row["ttft_ms"] > 0 and row["total_ms"] >= row["ttft_ms"] and row["rss_mb"] > 0
        assert row["query_peak_mem_mb"] >= row["query_mem_growth_mb"] >= 0
    by = {(r["mode"], r["stream_s"]): r for r in rows}
    assert by[("full", 12.0)]["tokens_kept_ratio"] == 1.0
    assert 0.25 < by[("omnizip-35", 12.0)]["tokens_kept_ratio"] < 0.45
    assert by[("omnizip-35", 12.0)]["kv_mb"] < by[("full", 12.0)]["kv_mb"]
    assert by[("reprefill", 12.0)]["kv_mb"] == 0 and by[("reprefill", 12.0)]["history_s"] <= 12.0
    for stage in ("audio_encode_ms", "video_encode_ms", "compress_ms", "prefill_ms", "total_ms"):
        assert set(by[("full", 6.0)]["stage_ms"][stage]) == {"p50", "p95", "p99"}
    for name in ("reprefill_ttft_over_streaming", "streaming_ttft_longest_over_shortest", "rss_flat_after_cap",
                 "kv_flat_after_cap", "omnizip35_window_prefill_over_full"):
        target = report["targets"][name]
        assert set(target) >= {"pass", "measured", "note", "target"}
    assert report["targets"]["reprefill_ttft_over_streaming"]["measured"]["reprefill / full"]["at_s"] == 12.0
    md = (out / "results.md").read_text()
    assert "| omnizip-35 | 12 s |" in md and "## Targets" in md
    for png in ("ttft_vs_stream.png", "memory_over_time.png", "window_latency.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    assert report["plots"] == ["ttft_vs_stream.png", "memory_over_time.png", "window_latency.png"]
    assert "[bench]" in proc.stderr and "100%" in proc.stderr  # the progress bar
    ts = report["timeseries"]["omnizip-35"]
    assert len(ts["t_s"]) == len(ts["rss_mb"]) == len(ts["kv_mb"]) == 6


def test_targets_defined_at_lengths_the_run_lacks_are_na_not_fail(stream_run):
    """6 s and 12 s streams cannot judge targets defined at 10 min or from 1 to 30 min: n/a, with the lengths."""
    _, report, proc = stream_run
    targets = report["targets"]
    for name in ("reprefill_ttft_over_streaming", "streaming_ttft_longest_over_shortest"):
        assert targets[name]["pass"] is None, targets[name]
        assert f"{name}: n/a - not judged" in proc.stdout
        assert "streaming_ttft_30min_over_1min" not in proc.stdout and "at_10min" not in proc.stdout
    flat = targets["streaming_ttft_longest_over_shortest"]
    assert flat["lengths_s"] == [6.0, 12.0] and flat["defined_at_s"] == [60.0, 1800.0]
    assert {(m["first_s"], m["last_s"]) for m in flat["measured"].values()} == {(6.0, 12.0)}
    assert "12 s / 6 s" in flat["note"]
    assert "not judged, only" in targets["rss_flat_after_cap"]["note"]  # 6 windows: too few after the cap
    md = (stream_run[0] / "results.md").read_text()
    assert "| streaming_ttft_longest_over_shortest | <= 1.3x (30 min / 1 min) | n/a |" in md


def test_every_plot_says_random_weights_and_quick_run(stream_run, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from omnizip_stream.bench.report import plot_caption, stream_plots

    _, report, _ = stream_run
    titles: list[str] = []
    set_title = Axes.set_title

    def spy(self, label, *args, **kwargs):
        titles.append(label)
        return set_title(self, label, *args, **kwargs)

    monkeypatch.setattr(Axes, "set_title", spy)
    quick = {**report, "quick": True}
    files = stream_plots(quick, tmp_path)
    assert len(files) == len(titles) == 3
    for title in titles:
        assert "random weights" in title and "quick run: streams of 6 s, 12 s" in title
    assert plot_caption({**report, "quick": False}) == "random weights (timings are real, answers are not)"
    real = {**report, "quick": False, "model": {**report["model"], "random_weights": False}}
    assert plot_caption(real) == ""


def test_omnizip_bench_replays_a_file_source(tmp_path, media_dir, capsys):
    code = main(["bench", "--out", str(tmp_path), "--source", f"file:{media_dir['av']}", "--stream-minutes",
                 "0.1", "--modes", "omnizip-45", "--query-repeats", "1", "--no-plots", "--threads", "2"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "results.json").read_text())
    (row,) = report["results"]
    assert row["mode"] == "omnizip-45" and row["reached"] and row["stream_s"] == 6.0  # a 4-s file, looped
    assert report["plots"] == [] and not list(tmp_path.glob("*.png"))


def test_stream_lengths_round_up_to_whole_windows(tmp_path):
    from omnizip_stream.cli import build_parser
    from omnizip_stream.cli.bench import resolve

    args = build_parser().parse_args(["bench", "--out", str(tmp_path), "--stream-minutes", "0.25,1,0.5"])
    modes, settings = resolve(args)
    assert settings.checkpoints_s == (16.0, 30.0, 60.0) and len(modes) == 14  # 12 + the two -lbyl modes
    assert settings.stream.torch_threads == 1  # recorded in the resolved config
    quick = resolve(build_parser().parse_args(["bench", "--out", str(tmp_path), "--quick"]))[1]
    assert quick.checkpoints_s == (30.0, 90.0) and quick.stream.cache_max_tokens == 4096
    assert quick.reprefill_budget_tokens == 4096 and quick.query_repeats == 3


def test_omnizip_bench_help(capsys):
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--out", "--quick", "--model", "--modes", "--stream-minutes", "--source", "--device"):
        assert flag in out


@pytest.mark.parametrize("args, message", [
    (["--modes", "full,fastest"], "unknown mode"),
    (["--stream-minutes", "one"], "--stream-minutes"),
    (["--stream-minutes", "0.01"], "at least 4 s"),
    (["--source", "file:/nonexistent/clip.mp4"], "does not exist"),
    (["--source", "camera"], "replayable"),
    (["--query-repeats", "0"], "--query-repeats"),
    (["--model", "/nonexistent/checkpoint"], "cannot load model"),
    (["--cache-max-tokens", "600", "--stream-minutes", "0.1", "--modes", "full"], "raise --cache-max-tokens"),
])
def test_omnizip_bench_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    code = main(["bench", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_omnizip_bench_requires_out(capsys):
    assert main(["bench"]) == 2 and "--out" in capsys.readouterr().err


def test_bench_engine_smallest_run(tmp_path):
    out = tmp_path / "engine.json"
    proc = _script("bench_engine.py", "--quick", "--tiny-minutes", "0.1,0.2", "--query-repeats", "1",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    for key in ("models", "results", "targets", "device", "versions", "config", "notes"):
        assert key in report, key
    tiny = report["models"]["tiny"]
    for stage in ("audio_encode_ms", "video_encode_ms", "compress_ms", "prefill_ms", "total_ms"):
        assert tiny["stage_ms"][stage]["p50"] is not None and tiny["stage_ms"][stage]["p95"] is not None
    assert [r["stream_s"] for r in report["results"]] == [6.0, 12.0]
    assert all(r["model"] == "tiny" and r["ttft_ms"] > 0 for r in report["results"])
    assert tiny["rtf"] > 0 and report["config"]["plan"]["tiny"]["cache_max_tokens"] == 2048
    assert set(report["targets"]["tiny"]) == {"ttft_last_over_first", "kv_flat_after_cap", "rss_flat_after_cap",
                                              "realtime_factor"}


def test_bench_prefill_smallest_run(tmp_path):
    out = tmp_path / "prefill.json"
    proc = _script("bench_prefill.py", "--quick", "--clips", "2,4", "--methods", "full,omnizip-35,random-35",
                   "--repeats", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    for key in ("results", "targets", "device", "versions", "config", "memory_method", "models"):
        assert key in report, key
    assert report["config"]["pixel_budget_per_frame"] == 128 * 28 * 28
    rows = {(r["clip_s"], r["method"]): r for r in report["results"]}
    assert set(rows) == {(c, m) for c in (2.0, 4.0) for m in ("full", "omnizip-35", "random-35")}
    for r in rows.values():
        for key in ("encode_ms", "compress_ms", "prefill_ms", "peak_mem_growth_mb", "kv_cache_mb", "tokens_kept"):
            assert r[key] is not None and r[key] >= 0, key
    full, ours, rand = rows[(4.0, "full")], rows[(4.0, "omnizip-35")], rows[(4.0, "random-35")]
    assert full["tokens_kept"] == full["tokens_total"] and full["prefill_speedup_vs_full"] == 1.0
    assert ours["tokens_kept"] < full["tokens_kept"] and ours["tokens_total"] == full["tokens_total"]
    assert ours["encode_ms"] == full["encode_ms"]  # the clip is encoded once for every method
    assert ours["kv_cache_mb"] < full["kv_cache_mb"]
    assert rand["audio_tokens_kept"] == ours["audio_tokens_kept"]  # same rho_audio
    assert rand["av_kept_ratio"] < full["av_kept_ratio"] == 1.0
    target = report["targets"]["tiny_full_over_omnizip35_prefill_4s"]
    assert target["measured"] > 0 and "60-s" in target["note"]


@pytest.mark.parametrize("script, args, message", [
    ("bench_prefill.py", ["--models", "huge"], "unknown model"),
    ("bench_prefill.py", ["--clips", "3"], "multiples of 2"),
    ("bench_engine.py", ["--method", "reprefill"], "one streaming mode"),
    ("bench_engine.py", ["--tiny-minutes", "x"], "--tiny-minutes"),
])
def test_scripts_bad_arguments_exit_2(tmp_path, script, args, message):
    proc = _script(script, "--out", str(tmp_path / "x.json"), *args, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
