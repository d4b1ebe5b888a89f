"""Accuracy reports: per-task and overall accuracy, the paper's normalised average, measured retention.

The normalised average is Table 1's last column: for each method row, the mean over benchmarks of
``method_accuracy / full_accuracy`` (the uncompressed model on the same path = 100 %). Benchmarks where
either accuracy is missing are left out of the mean (as the paper leaves out FastV's OOM entry).

Accuracy counts every item of the benchmark: an error (missing media, context overflow) or an
unanswered reply is wrong, as in the reference scripts; the counts are reported next to it.
Retention is measured, not nominal: kept / total audio+video tokens, pooled over all items (issue
#13 of the reference repo reports pooled and per-sample means; both are in the JSON summary).
"""

from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from omnizip_stream.evaluation.settings import FULL

SUMMARY = "summary.json"
REPORT = "report.md"


def normalised_average(accuracy: Mapping[str, float | None], full: Mapping[str, float | None]) -> float | None:
    """Mean over benchmarks of ``accuracy[b] / full[b]`` (benchmarks missing either, or with full 0, skipped).

    Args:
        accuracy: benchmark -> accuracy of the method (any scale, same as ``full``).
        full: benchmark -> accuracy of the full-token model.

    Returns:
        The fraction (1.0 = as accurate as full), or None when no benchmark has both.
    """
    ratios = [accuracy[b] / full[b] for b in accuracy  # type: ignore[operator]
              if accuracy[b] is not None and full.get(b) is not None and full[b]]
    return sum(ratios) / len(ratios) if ratios else None


def _group_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)
    ok = [r for r in records if r.get("status") == "ok"]
    correct = sum(1 for r in records if r.get("correct"))
    a_tot = sum(r.get("audio_tokens_total") or 0 for r in ok)
    a_kept = sum(r.get("audio_tokens_kept") or 0 for r in ok)
    v_tot = sum(r.get("video_tokens_total") or 0 for r in ok)
    v_kept = sum(r.get("video_tokens_kept") or 0 for r in ok)
    per_sample = [r["retention_measured"] for r in ok if r.get("retention_measured") is not None]
    prefill = [float(r["prefill_ms"]) for r in ok if r.get("prefill_ms") is not None]
    return {
        "n": n, "correct": correct, "accuracy": correct / n if n else None,
        "errors": n - len(ok), "unanswered": sum(1 for r in ok if r.get("pred") is None),
        "retention_measured": (a_kept + v_kept) / (a_tot + v_tot) if a_tot + v_tot else None,
        "retention_audio": a_kept / a_tot if a_tot else None,
        "retention_video": v_kept / v_tot if v_tot else None,
        "retention_per_sample_mean": sum(per_sample) / len(per_sample) if per_sample else None,
        "prefill_ms_mean": sum(prefill) / len(prefill) if prefill else None,
        "prefill_ms_median": statistics.median(prefill) if prefill else None,
        "tokens_total": a_tot + v_tot, "tokens_kept": a_kept + v_kept,
    }


def _row_key(method: str, retention: str) -> str:
    return FULL if retention == FULL else f"{method}@{retention}"


def summarise(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The JSON summary of result records, grouped by path, then method row, then benchmark and task.

    Returns:
        ``{"paths": {path: {"benchmarks": [...], "rows": [row, ...]}}}`` where each row has ``method``,
        ``retention``, ``label``, per-benchmark ``{accuracy, n, errors, unanswered, tasks: {...}}``,
        ``overall`` (pooled over all items), ``normalised_average`` and the measured retention and prefill.
    """
    by_path: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_path[str(r["path"])].append(r)
    out: dict[str, Any] = {"paths": {}}
    for path, recs in sorted(by_path.items()):
        benchmarks = sorted({str(r["benchmark"]) for r in recs})
        rows: dict[str, dict[str, Any]] = {}
        grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in recs:
            grouped[_row_key(str(r["method"]), str(r["retention"]))].append(r)
        for label, rrecs in grouped.items():
            first = rrecs[0]
            per_bench: dict[str, Any] = {}
            for bench in benchmarks:
                brecs = [r for r in rrecs if r["benchmark"] == bench]
                if not brecs:
                    continue
                stats = _group_stats(brecs)
                tasks: dict[str, list[dict[str, Any]]] = defaultdict(list)
                for r in brecs:
                    tasks[str(r.get("task") or "all")].append(r)
                stats["tasks"] = {t: _group_stats(trs) for t, trs in sorted(tasks.items())}
                per_bench[bench] = stats
            rows[label] = {"label": label, "method": "full" if label == FULL else first["method"],
                           "retention": first["retention"], "benchmarks": per_bench, "overall": _group_stats(rrecs)}
        full_acc = {b: s["accuracy"] for b, s in rows[FULL]["benchmarks"].items()} if FULL in rows else {}
        for row in rows.values():
            acc = {b: s["accuracy"] for b, s in row["benchmarks"].items()}
            row["normalised_average"] = normalised_average(acc, full_acc) if full_acc else None
        out["paths"][path] = {"benchmarks": benchmarks, "rows": sorted(rows.values(), key=_row_order)}
    return out


def _row_order(row: dict[str, Any]) -> tuple[int, float, str]:
    if row["label"] == FULL:
        return (0, 0.0, "")
    try:
        retention = -float(str(row["retention"]))
    except ValueError:
        retention = 0.0
    order = ["omnizip", "random", "uniform", "dycoke"]
    method = str(row["method"])
    return (1, retention, f"{order.index(method) if method in order else 9}{method}")


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def markdown(summary: dict[str, Any], *, model: str | None = None, notice: str | None = None) -> str:
    """A Markdown report shaped like the paper's Table 1 (one table per path), then per-task tables."""
    lines = ["# OmniZip accuracy evaluation", ""]
    if model:
        lines += [f"Model: `{model}`", ""]
    if notice:
        lines += [f"> {notice}", ""]
    lines += ["Accuracy in %; retention = measured kept/total audio+video tokens pooled over items (nominal "
              "setting in the row name); prefill = mean text-model prefill per item; norm. avg = mean over "
              "benchmarks of accuracy / full accuracy (Table 1). Errors and unanswered replies count as wrong.", ""]
    for path, data in summary["paths"].items():
        benches = data["benchmarks"]
        lines += [f"## Table 1 — {path} path", ""]
        header = ["method", "nominal", "retention", "prefill ms", *benches, "norm. avg"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        full_n = next(({b: s["n"] for b, s in r["benchmarks"].items()} for r in data["rows"] if r["label"] == FULL), {})
        partial = False
        for row in data["rows"]:
            nominal = "100 %" if row["label"] == FULL else str(row["retention"])
            cells = [row["method"] if row["label"] != FULL else "full tokens", nominal,
                     _pct(row["overall"]["retention_measured"]), _ms(row["overall"]["prefill_ms_mean"])]
            for b in benches:
                stats = row["benchmarks"].get(b)
                mark = "*" if stats is not None and b in full_n and stats["n"] != full_n[b] else ""
                partial = partial or bool(mark)
                cells.append(_pct(stats["accuracy"]) + mark if stats is not None else "–")
            cells.append(_pct(row["normalised_average"]) + (" %" if row["normalised_average"] is not None else ""))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if partial:
            lines += ["\\* evaluated on a different number of items than `full` (an unfinished run): not comparable "
                      "yet; resume the run to complete it.", ""]
        for bench in benches:
            tasks = sorted({t for row in data["rows"] for t in row["benchmarks"].get(bench, {}).get("tasks", {})})
            lines += [f"### {bench} ({path}) — per task", ""]
            header = ["method", *tasks, "overall", "n", "errors", "unanswered"]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for row in data["rows"]:
                stats = row["benchmarks"].get(bench)
                if stats is None:
                    continue
                cells = [row["label"]] + [_pct(stats["tasks"][t]["accuracy"]) if t in stats["tasks"] else "–"
                                          for t in tasks]
                cells += [_pct(stats["accuracy"]), str(stats["n"]), str(stats["errors"]), str(stats["unanswered"])]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def write_reports(out_dir: str, records: list[dict[str, Any]], *, model: str | None = None,
                  notice: str | None = None) -> tuple[str, str]:
    """Write ``summary.json`` and ``report.md`` into ``out_dir``; returns their paths."""
    summary = summarise(records)
    summary["model"] = model
    summary["random_weights_notice"] = notice
    summary_path = os.path.join(out_dir, SUMMARY)
    report_path = os.path.join(out_dir, REPORT)
    with open(summary_path, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, sort_keys=True)
    with open(report_path, "w", encoding="utf-8") as fh:
        fh.write(markdown(summary, model=model, notice=notice) + "\n")
    return summary_path, report_path
