"""The stream latency benchmark (``omnizip bench``, ``scripts/bench_stream.py``, ``scripts/bench_engine.py``).

Every mode replays the same stream in turn, in one process, sharing the loaded model (see
:mod:`omnizip_stream.bench.runner` for how windows are fed and what is timed). The report holds a
``results`` list (one row per mode and checkpoint), per-mode summaries, per-window time series, the
targets with pass/fail computed from this run, the environment and the resolved configuration.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omnizip_stream.bench import targets as tg
from omnizip_stream.bench.env import environment, load_average
from omnizip_stream.bench.models import model_info
from omnizip_stream.bench.modes import Mode
from omnizip_stream.bench.progress import ProgressBar
from omnizip_stream.bench.report import stream_markdown, stream_plots, write_json
from omnizip_stream.bench.runner import ModeRecord, RunSettings, run_mode, warm_up
from omnizip_stream.bench.summary import DEFINITIONS, mode_summary, rows_for

TIMESERIES_KEYS = ("t_s", "total_ms", "prefill_ms", "kv_tokens", "kv_mb", "store_mb", "rss_mb")


async def _run_all(adapter: Any, modes: list[Mode], settings: RunSettings,
                   note: Callable[[str], None], warmup_stream_windows: int) -> list[ModeRecord]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="model") as executor:
        if warmup_stream_windows:
            await warm_up(adapter, settings, executor, warmup_stream_windows)
        return [await run_mode(adapter, mode, settings, executor, note) for mode in modes]


def run_benchmark(
    adapter: Any,
    model: str,
    modes: list[Mode],
    settings: RunSettings,
    *,
    warmup_windows: int = 2,
    warmup_stream_windows: int = 4,
    progress: bool = True,
) -> tuple[dict[str, Any], list[ModeRecord]]:
    """Run every mode over the stream and assemble the report (targets not included).

    Args:
        adapter: the loaded model adapter.
        model: the model's name as given by the user.
        modes: modes to run, in order.
        settings: source, checkpoints, engine config and queries.
        warmup_windows: first windows of each mode left out of latency statistics.
        warmup_stream_windows: windows of an unrecorded warm-up stream before the first mode.
        progress: show a progress bar on stderr.

    Returns:
        ``(report, records)``: the JSON-ready report and the raw per-mode records.
    """
    env = environment(adapter.device)
    settings = dataclasses.replace(settings, stream=settings.stream.for_model(adapter.spec))  # window_s: the model's
    window_s = settings.stream.window_s
    assert window_s is not None  # filled by for_model
    per_mode = round(max(settings.checkpoints_s) / window_s) + len(settings.checkpoints_s)
    bar = ProgressBar(per_mode * len(modes), label="bench") if progress else None
    t0 = time.perf_counter()
    try:
        note = bar.advance if bar else (lambda _n: None)
        records = asyncio.run(_run_all(adapter, modes, settings, note, warmup_stream_windows))
    finally:
        if bar:
            bar.close()
    rows = [row for rec in records for row in rows_for(rec, window_s, warmup_windows)]
    summaries = [mode_summary(rec, window_s, warmup_windows) for rec in records]
    report: dict[str, Any] = {
        "environment": env,
        "device": env["device"],
        "versions": env["versions"],
        "model": model_info(adapter, model),
        "config": {
            "source": settings.source,
            "stream_lengths_s": list(settings.checkpoints_s),
            "modes": [dataclasses.asdict(m) for m in modes],
            "question": settings.question,
            "max_new_tokens": settings.max_new_tokens,
            "query_repeats": settings.query_repeats,
            "query_warmup": settings.query_warmup,
            "reprefill_repeats": settings.reprefill_repeats,
            "reprefill_budget_tokens": settings.reprefill_budget_tokens,
            "warmup_windows": warmup_windows,
            "warmup_stream_windows": warmup_stream_windows,
            "max_side": settings.max_side,
            "stream_config": dataclasses.asdict(settings.stream),
        },
        "definitions": DEFINITIONS,
        "results": rows,
        "modes": summaries,
        "timeseries": {rec.mode: {k: [w[k] for w in rec.windows] for k in TIMESERIES_KEYS} for rec in records},
        "wall_s": time.perf_counter() - t0,
        "load_average_end": load_average(),
    }
    return report, records


def stream_targets(report: dict[str, Any], records: list[ModeRecord], warmup_windows: int) -> dict[str, Any]:
    """The targets of the streaming latency issue, from this run.

    Named by what they measure; the stream lengths used are in each record (``at_s``, ``first_s`` /
    ``last_s``), and a target defined at lengths this run does not have (``--quick``) is ``n/a``.
    """
    rows, summaries = report["results"], report["modes"]
    names = [s["mode"] for s in summaries]
    windows = {rec.mode: rec.windows for rec in records}
    return {
        "reprefill_ttft_over_streaming": tg.reprefill_ratio(rows, names, at_s=600.0),
        "streaming_ttft_longest_over_shortest": tg.ttft_flatness(rows, names, summaries, first_s=60.0,
                                                                 last_s=1800.0),
        "rss_flat_after_cap": tg.memory_flatness(summaries, "rss_flatness"),
        "kv_flat_after_cap": tg.memory_flatness(summaries, "kv_flatness"),
        "omnizip35_window_prefill_over_full": tg.prefill_ratio(summaries, windows, warmup_windows),
    }


def write_outputs(report: dict[str, Any], out_dir: Path, *, plots: bool = True) -> list[Path]:
    """Write ``results.json``, ``results.md`` and the PNGs into ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = stream_plots(report, out_dir) if plots else []
    report["plots"] = files
    write_json(out_dir / "results.json", report)
    (out_dir / "results.md").write_text(stream_markdown(report))
    return [out_dir / "results.json", out_dir / "results.md", *(out_dir / f for f in files)]
