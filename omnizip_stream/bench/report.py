"""Write a stream benchmark's results: ``results.json``, ``results.md`` and PNG plots (matplotlib, Agg).

Plots: ``ttft_vs_stream.png`` (query TTFT against stream length, one line per mode, log scale),
``memory_over_time.png`` (process RSS and KV cache size against stream time) and
``window_latency.png`` (median per-window time by stage per streaming mode, p95 marked). Every plot
says in its title when the model has random weights and when the run is a ``--quick`` one
(:func:`plot_caption`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STAGE_LABELS = {"audio_encode_ms": "audio encode", "video_encode_ms": "video encode",
                "compress_ms": "compress", "prefill_ms": "prefill"}


def _clean(value: Any) -> Any:
    """NaN/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as indented JSON (NaN written as null)."""
    path.write_text(json.dumps(_clean(report), indent=1) + "\n")


def emit_json(result: dict[str, Any], out: Path | None) -> None:
    """Print ``result`` as JSON on stdout and, with ``out``, also write it there (its folder created)."""
    text = json.dumps(result, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)


def run_json_script(
    parser: argparse.ArgumentParser, argv: list[str] | None, run: Callable[[argparse.Namespace], dict[str, Any]]
) -> tuple[argparse.Namespace, dict[str, Any]] | None:
    """Parse ``argv``, run the benchmark and write its report to ``args.out`` as JSON.

    Returns:
        ``(args, report)``, or None after a one-line error on stderr (bad flags or a model that cannot
        load: the caller exits 2).
    """
    from omnizip.adapters.base import ModelLoadError

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = run(args)
    except (ValueError, ModelLoadError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    return args, report


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _len(s: float) -> str:
    return f"{round(s / 60, 2):g} min" if s >= 60 else f"{round(s, 1):g} s"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{value:.0%}"


def targets_markdown(targets: dict[str, Any]) -> list[str]:
    """A table of the targets: name, target, pass/fail, measured value, note."""
    lines = ["| target | goal | result | measured | note |", "|---|---|---|---|---|"]
    for name, t in targets.items():
        verdict = {True: "**pass**", False: "**FAIL**", None: "n/a"}[t.get("pass")]
        measured = t.get("measured")
        if isinstance(measured, dict):
            parts = []
            for k, v in measured.items():
                if isinstance(v, dict):
                    val = v.get("ratio")
                    parts.append(f"{k}: {_num(val, 3)}")
                else:
                    parts.append(f"{k}: {_num(v, 1)}")
            shown = "; ".join(parts)
        else:
            shown = _num(measured, 3)
        lines.append(f"| {name} | {t.get('target', '')} | {verdict} | {shown} | {t.get('note', '')} |")
    return lines


def stream_markdown(report: dict[str, Any]) -> str:
    """The Markdown report of a stream benchmark (header, targets, rows, stages)."""
    env, model = report["environment"], report["model"]
    lines = [
        f"# {report['benchmark']}",
        "",
        f"Model `{model['model']}` ({'random weights, ' if model['random_weights'] else ''}"
        f"{model['llm_layers']} LLM layers, hidden {model['hidden_size']}, {model['dtype']}) on "
        f"`{env['device']}`, {env['torch_threads']} torch thread(s); load average at start "
        f"{env['load_average_start']}, at end {report.get('load_average_end')}. Source `{report['config']['source']}`, "
        f"{'quick run' if report['quick'] else 'full run'}, wall time {report['wall_s']:.0f} s.",
        "",
        f"Command: `{report['command']}`",
        "",
        "## Targets (ratios from this run)",
        "",
        *targets_markdown(report["targets"]),
        "",
        "## Results",
        "",
        "| mode | stream | TTFT ms | total ms | window ms p50 / p95 / p99 | RTF | KV MiB | RSS MiB | query peak "
        "MiB | kept A/V (audio, video) | history s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if not r.get("reached"):
            lines.append(f"| {r['mode']} | {_len(r['stream_s'])} | not reached | | | | | | | | |")
            continue
        lines.append(
            f"| {r['mode']} | {_len(r['stream_s'])} | {_num(r['ttft_ms'])} | {_num(r['total_ms'])} | "
            f"{_num(r['window_ms_p50'])} / {_num(r['window_ms_p95'])} / {_num(r['window_ms_p99'])} | "
            f"{_num(r['rtf'])} | {_num(r['kv_mb'], 2)} | {_num(r['rss_mb'], 0)} | {_num(r.get('query_peak_mem_mb'), 0)} | "
            f"{_pct(r['tokens_kept_ratio'])} "
            f"({_pct(r['audio_kept_ratio'])}, {_pct(r['video_kept_ratio'])}) | {_num(r['history_s'], 0)} |"
        )
    lines += ["", "## Per-window latency by stage (whole stream after warm-up, ms: p50 / p95 / p99)", "",
              "| mode | audio encode | video encode | compress | prefill | total | RTF | cap reached | "
              "RSS drift / peak after cap | KV drift / peak after cap |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in report["modes"]:
        if s["kind"] != "streaming":
            continue
        st = s["stage_ms"]
        cells = [" / ".join(_num(st[k][p]) for p in ("p50", "p95", "p99"))
                 for k in (*STAGE_LABELS, "total_ms")]
        rss, kv = s["rss_flatness"], s["kv_flatness"] or {}
        cap = rss["cap_reached_s"]
        lines.append(f"| {s['mode']} | {' | '.join(cells)} | {_num(s.get('rtf'))} | "
                     f"{_len(cap) if cap is not None else 'no'} | {_pct(rss['drift'])} / {_pct(rss['peak_growth'])} | "
                     f"{_pct(kv.get('drift'))} / {_pct(kv.get('peak_growth'))} |")
    lines += ["", "## Definitions", ""] + [f"- `{k}`: {v}" for k, v in report["definitions"].items()]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in report.get("notes", [])]
    return "\n".join(lines) + "\n"


def _colors(names: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return {n: cmap(i % 20) for i, n in enumerate(names)}


def plot_caption(report: dict[str, Any]) -> str:
    """What a reader of any plot must know: random weights, quick run (with its lengths); '' if neither."""
    parts = []
    if report.get("model", {}).get("random_weights"):
        parts.append("random weights (timings are real, answers are not)")
    if report.get("quick"):
        lengths = report.get("config", {}).get("stream_lengths_s") or []
        shown = f": streams of {', '.join(_len(x) for x in lengths)}" if lengths else ""
        parts.append(f"quick run{shown}")
    return " · ".join(parts)


def _title(text: str, caption: str) -> str:
    return f"{text}\n{caption}" if caption else text


def stream_plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    """Draw the three PNGs; returns their file names (empty when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    model = report["model"]
    tag = f"{model['model']} on {report['environment']['device']}"
    caption = plot_caption(report)
    names = [s["mode"] for s in report["modes"]]
    colors = _colors(names)
    files = []

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name in names:
        pts = [(r["stream_s"] / 60, r["ttft_ms"]) for r in report["results"]
               if r["mode"] == name and r.get("reached") and r.get("ttft_ms")]
        if pts:
            style = "--" if name.startswith("reprefill") else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=colors[name], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("stream length (minutes)")
    ax.set_ylabel("time to first token (ms, log scale)")
    ax.set_title(_title(f"Query TTFT vs stream length ({tag})\nsolid: streaming KV cache, dashed: re-prefill the history",
                        caption))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir / "ttft_vs_stream.png", dpi=110)
    plt.close(fig)
    files.append("ttft_vs_stream.png")

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True)
    for name in names:
        ts = report["timeseries"].get(name)
        if not ts:
            continue
        style = "--" if name.startswith("reprefill") else "-"
        t_min = [t / 60 for t in ts["t_s"]]
        ax1.plot(t_min, ts["rss_mb"], style, color=colors[name], label=name, linewidth=1.2)
        if not name.startswith("reprefill"):
            ax2.plot(t_min, [a + b for a, b in zip(ts["kv_mb"], ts["store_mb"], strict=True)], style, color=colors[name],
                     label=name, linewidth=1.2)
    ax1.set_ylabel("process RSS (MiB)")
    ax1.set_title(_title(f"Memory over the stream ({tag}); modes run one after another in one process", caption))
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=7, ncol=3)
    ax2.set_ylabel("stream cache: KV + kept embeddings (MiB)")
    ax2.set_xlabel("stream time (minutes)")
    ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "memory_over_time.png", dpi=110)
    plt.close(fig)
    files.append("memory_over_time.png")

    streaming = [s for s in report["modes"] if s["kind"] == "streaming"]
    if streaming:
        fig, ax = plt.subplots(figsize=(9, 0.5 * len(streaming) + (2.4 if caption else 2)))
        stage_colors = dict(zip(STAGE_LABELS, ["#4c72b0", "#dd8452", "#55a868", "#c44e52"], strict=True))
        for i, s in enumerate(streaming):
            left = 0.0
            for stage, label in STAGE_LABELS.items():
                v = s["stage_ms"][stage]["p50"] or 0.0
                ax.barh(i, v, left=left, color=stage_colors[stage], label=label if i == 0 else None)
                left += v
            p95 = s["stage_ms"]["total_ms"]["p95"]
            if p95:
                ax.plot([p95], [i], marker="|", color="black", markersize=14, label="p95 total" if i == 0 else None)
        ax.set_yticks(range(len(streaming)), [s["mode"] for s in streaming])
        ax.invert_yaxis()
        ax.set_xlabel("per-window ingest time (ms, median by stage)")
        ax.set_title(_title(f"Where a 2-s window's time goes ({tag})", caption))
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(True, axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "window_latency.png", dpi=110)
        plt.close(fig)
        files.append("window_latency.png")
    return files
