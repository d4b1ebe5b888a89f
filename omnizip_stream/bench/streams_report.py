"""Output of ``omnizip bench --streams``: the JSON report, a table for the terminal and one PNG (2 x 2 panels)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from omnizip_stream.bench.report import _num, plot_caption, write_json

logger = logging.getLogger(__name__)


def streams_table(report: dict[str, Any]) -> str:
    """One row per stream count, then the targets (plain text, for stdout)."""
    header = ("streams", "real time", "window ms p50/p95", "TTFT ms p50/p95", "questions", "video dropped",
              "cache MiB/stream", "RSS MiB/stream", "win/s 1-at-a-time", "win/s batched", "speedup", "needed win/s")
    rows = [header]
    for r in report["results"]:
        lat, ttft, tp = r["window_latency_ms"], r["ttft_ms"], r["throughput_windows_per_s"]
        rows.append((
            str(r["streams"]), f"{'yes' if r['realtime'] else 'no'} ({r['streams_realtime']}/{r['streams']})",
            f"{_num(lat['p50'], 0)}/{_num(lat['p95'], 0)}", f"{_num(ttft['p50'], 0)}/{_num(ttft['p95'], 0)}",
            f"{r['questions']}" + (f" ({r['questions_failed']} failed)" if r["questions_failed"] else ""),
            str(r["video_dropped"]), _num(r["cache_mb_per_stream"], 2), _num(r["rss_mb_per_stream"], 1),
            _num(tp["one_at_a_time"], 1), _num(tp["batched"], 1), _num(tp["speedup"], 2),
            _num(tp["realtime_demand"], 1),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if not report.get("batching_available"):
        lines.append("batched: n/a (this build's ModelWorker does not batch across streams)")
    for name, t in report["targets"].items():
        verdict = {True: "pass", False: "FAIL", None: "n/a"}[t["pass"]]
        lines.append(f"{name}: {verdict} (target {t['target']}; measured {_num(t['measured'], 2)})")
    return "\n".join(lines)


def streams_plot(report: dict[str, Any], path: Path) -> bool:
    """Draw latency, TTFT, throughput and memory against the stream count; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    rows = report["results"]
    n = [r["streams"] for r in rows]

    def series(values: list[Any]) -> list[float]:
        return [math.nan if v is None else float(v) for v in values]

    def log_if_positive(ax: Any, *lines: list[float]) -> None:
        if any(v > 0 for line in lines for v in line if math.isfinite(v)):
            ax.set_yscale("log")

    window_ms = report["config"]["window_s"] * 1e3
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0][0]
    lines = [series([r["window_latency_ms"][key] for r in rows]) for key in ("p50", "p95")]
    for line, key, style in zip(lines, ("p50", "p95"), ("o-", "s--"), strict=True):
        ax.plot(n, line, style, label=f"window latency {key}")
    ax.axhline(window_ms, color="grey", lw=1, ls=":", label="one window (real-time limit)")
    ax.set(title="per-window latency (end at source -> ingested)", ylabel="ms")
    log_if_positive(ax, *lines)
    ax = axes[0][1]
    lines = [series([r["ttft_ms"][key] for r in rows]) for key in ("p50", "p95")]
    for line, key, style in zip(lines, ("p50", "p95"), ("o-", "s--"), strict=True):
        ax.plot(n, line, style, label=f"TTFT {key}")
    ax.set(title="question TTFT under load", ylabel="ms")
    log_if_positive(ax, *lines)
    ax = axes[1][0]
    tp = [r["throughput_windows_per_s"] for r in rows]
    lines = [series([t["one_at_a_time"] for t in tp]), series([t["realtime_demand"] for t in tp])]
    ax.plot(n, lines[0], "o-", label="one at a time (max_batch=1)")
    if report.get("batching_available"):
        lines.append(series([t["batched"] for t in tp]))
        ax.plot(n, lines[-1], "s-", label=f"batched (max_batch={report['config']['max_batch']})")
    ax.plot(n, lines[1], ":", color="grey", label="needed live (streams / window_s)")
    ax.set(title="throughput, windows fed as fast as possible", ylabel="windows / s")
    log_if_positive(ax, *lines)
    ax = axes[1][1]
    ax.plot(n, series([r["cache_mb_per_stream"] for r in rows]), "o-", label="cache (KV + stored embeds)")
    ax.plot(n, series([r["rss_mb_per_stream"] for r in rows]), "s--", label="process RSS growth")
    ax.set(title="memory per stream", ylabel="MiB")
    for a in axes.flat:
        a.set_xscale("log", base=2)
        a.set_xticks(n, [str(x) for x in n])
        a.set_xlabel("streams on one model")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    realtime = [r["streams"] for r in rows if r["realtime"]]
    model = report["model"]
    caption = plot_caption(report)
    fig.suptitle(f"omnizip bench --streams: {model['model']} on {report['environment']['device']}, "
                 f"{report['config']['window_s']:g}-s windows; real time up to {max(realtime, default=0)} streams"
                 + (f"\n{caption}" if caption else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_streams_outputs(report: dict[str, Any], json_path: Path, png_path: Path | None) -> list[Path]:
    """Write the JSON (and the PNG unless ``png_path`` is None); returns the paths written."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    report["plots"] = [] if png_path is None else [str(png_path)]
    write_json(json_path, report)
    if png_path is not None:
        png_path.parent.mkdir(parents=True, exist_ok=True)
        if streams_plot(report, png_path):
            paths.append(png_path)
        else:
            report["plots"] = []
            write_json(json_path, report)
    return [json_path, *paths]
