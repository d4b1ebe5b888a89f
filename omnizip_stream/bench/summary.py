"""Turn per-window and per-query records into result rows, per-mode summaries and target checks.

Conventions (written into every result file as ``definitions``):

* the first ``warmup_windows`` windows of a mode are ingested but left out of latency statistics;
* a row's window latencies cover the windows since the previous checkpoint (so drift shows);
* ``rtf`` (real-time factor) = stream seconds / seconds the pipeline spent ingesting them;
* ``tokens_kept_ratio`` = kept / seen A/V tokens over the whole stream so far;
* the cache cap is "reached" at the first window that evicted another; RSS and KV flatness compare
  every later sample with the sample at that window.
"""

from __future__ import annotations

from typing import Any

from omnizip_stream.bench.env import median, percentiles
from omnizip_stream.bench.runner import STAGES, ModeRecord

DEFINITIONS = {
    "window_ms": "pipeline time per window (engine total_ms: encode + compress + prefill); reprefill modes only "
                 "append the raw window to a ring buffer",
    "window_stats_span": "windows since the previous checkpoint, after the warm-up windows",
    "ttft_ms": "median over the timed queries; streaming: prefill of the A/V closing tokens and the question on "
               "the cached stream; reprefill: encode + compress + prefill of the ring buffer and the question",
    "total_ms": "ttft_ms plus greedy decoding of up to max_new_tokens (random weights may stop early at an eos id)",
    "rtf": "stream seconds / seconds of pipeline time over the same windows (>1 = faster than real time)",
    "kv_mb": "bytes of the KV tensors of the stream cache (MiB); store_mb: kept embeddings kept for exact "
             "re-anchoring (streaming) or raw windows in the ring buffer (reprefill)",
    "rss_mb": "resident set size of the benchmark process after the window (all modes run in one process, "
              "one after the other; rss_delta_mb is relative to the start of the mode)",
    "query_peak_mem_mb": "peak process RSS (CPU, sampled every 5 ms) or CUDA allocated memory during the "
                         "checkpoint's queries; query_mem_growth_mb: the same minus the value before them",
    "cap_reached_s": "stream time of the first window that evicted an older one",
    "drift": "after the cap: median of the last quarter of the samples / median of the first quarter - 1 "
             "(what a leak or unbounded growth would show); peak_growth: max after the cap / value at the cap - 1",
}


def _interval(windows: list[dict[str, Any]], start_s: float, end_s: float, warmup: int) -> list[dict[str, Any]]:
    return [w for i, w in enumerate(windows) if i >= warmup and start_s < w["t_s"] <= end_s + 1e-6]


def _stage_stats(windows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    return {stage: percentiles([w[stage] for w in windows]) for stage in STAGES}


def _rtf(windows: list[dict[str, Any]], window_s: float) -> float | None:
    busy_s = sum(w["total_ms"] for w in windows) / 1e3
    return len(windows) * window_s / busy_s if busy_s > 0 else None


def _kept(windows: list[dict[str, Any]]) -> dict[str, float | None]:
    a_t = sum(w.get("audio_tokens", 0) for w in windows)
    a_k = sum(w.get("audio_kept", 0) for w in windows)
    v_t = sum(w.get("video_tokens", 0) for w in windows)
    v_k = sum(w.get("video_kept", 0) for w in windows)
    return {
        "tokens_kept_ratio": (a_k + v_k) / (a_t + v_t) if a_t + v_t else None,
        "audio_kept_ratio": a_k / a_t if a_t else None,
        "video_kept_ratio": v_k / v_t if v_t else None,
    }


def _at(windows: list[dict[str, Any]], t_s: float) -> dict[str, Any] | None:
    before = [w for w in windows if w["t_s"] <= t_s + 1e-6]
    return before[-1] if before else None


def rows_for(record: ModeRecord, window_s: float, warmup: int) -> list[dict[str, Any]]:
    """One row per checkpoint of a mode (the ``results`` list of the JSON)."""
    rows = []
    prev = 0.0
    rss0 = record.info.get("rss_start_mb")
    for q in record.queries:
        cp = q["stream_s"]
        row: dict[str, Any] = {"mode": record.mode, "kind": record.kind, "stream_s": cp, "reached": q["reached"]}
        if not q["reached"]:
            rows.append(row)
            continue
        span = _interval(record.windows, prev, cp, warmup)
        prev = cp
        stages = _stage_stats(span)
        last = _at(record.windows, cp) or {}
        if record.kind == "streaming":
            kept = _kept([w for w in record.windows if w["t_s"] <= cp + 1e-6])
        else:
            kept = {k: q.get(k) for k in ("tokens_kept_ratio", "audio_kept_ratio", "video_kept_ratio")}
        row.update({
            "ttft_ms": median(q["ttft_ms_runs"]),
            "total_ms": median(q["total_ms_runs"]),
            "ttft_ms_runs": q["ttft_ms_runs"],
            "answer_tokens": q["answer_tokens"],
            "prompt_tokens": q["prompt_tokens"],
            "history_s": q["history_s"],
            "window_ms_p50": stages["total_ms"]["p50"],
            "video_patches_p50": percentiles([w.get("video_patches", 0) for w in span])["p50"],
            "window_ms_p95": stages["total_ms"]["p95"],
            "window_ms_p99": stages["total_ms"]["p99"],
            "stage_ms": stages,
            "rtf": _rtf(span, window_s) if record.kind == "streaming" else None,
            "kv_tokens": last.get("kv_tokens"),
            "kv_mb": last.get("kv_mb"),
            "store_mb": last.get("store_mb"),
            "rss_mb": last.get("rss_mb"),
            "rss_delta_mb": (last["rss_mb"] - rss0) if last and rss0 is not None else None,
            "query_peak_mem_mb": q.get("query_peak_mem_mb"),
            "query_mem_growth_mb": q.get("query_mem_growth_mb"),
            "windows_evicted": last.get("windows_evicted"),
            "reanchors": last.get("reanchors"),
            **kept,
        })
        if record.kind == "reprefill":
            row["query_stages_ms"] = q.get("stages_ms")
        rows.append(row)
    return rows


def _flatness(windows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """How ``key`` (RSS, KV MiB) behaves after the cap: drift between the first and last quarter, and peak.

    ``drift`` = median of the last quarter of post-cap samples / median of the first quarter - 1: a
    leak or unbounded growth shows as drift. ``peak_growth`` = max after the cap / value at the cap - 1:
    it also counts allocator churn that comes and goes (the heap grows and shrinks between windows).
    """
    cap = next((i for i, w in enumerate(windows) if w["evicted"]), None)
    if cap is None:
        return {"cap_reached_s": None, "drift": None, "peak_growth": None, "at_cap": None, "max_after": None,
                "samples_after": 0}
    base = windows[cap][key]
    after = [w[key] for w in windows[cap:]]
    q = max(1, len(after) // 4)
    first, last = median(after[:q]), median(after[-q:])
    return {"cap_reached_s": windows[cap]["t_s"], "at_cap": base, "max_after": max(after), "min_after": min(after),
            "first_quarter_median": first, "last_quarter_median": last,
            "drift": (last / first - 1) if first and last is not None else None,
            "peak_growth": (max(after) / base - 1) if base else None, "samples_after": len(after)}


def mode_summary(record: ModeRecord, window_s: float, warmup: int) -> dict[str, Any]:
    """Whole-stream statistics of one mode (stages, real-time factor, memory flatness)."""
    span = record.windows[warmup:]
    out: dict[str, Any] = {"mode": record.mode, "kind": record.kind, "windows": len(record.windows),
                           "stream_s": record.windows[-1]["t_s"] if record.windows else 0.0, **record.info}
    out["stage_ms"] = _stage_stats(span)
    out["video_patches_total"] = sum(w.get("video_patches", 0) for w in record.windows)
    out["video_encode_ms_total"] = sum(w.get("video_encode_ms", 0.0) for w in record.windows)
    out["window_ms_total"] = sum(w.get("total_ms", 0.0) for w in record.windows)
    if record.kind == "streaming":
        out["rtf"] = _rtf(span, window_s)
        out.update(_kept(record.windows))
    out["rss_flatness"] = _flatness(record.windows, "rss_mb")
    out["kv_flatness"] = _flatness(record.windows, "kv_mb") if record.kind == "streaming" else None
    return out


def row_at(rows: list[dict[str, Any]], mode: str, stream_s: float) -> dict[str, Any] | None:
    """The reached row of ``mode`` at ``stream_s``, or None."""
    return next((r for r in rows if r["mode"] == mode and r["stream_s"] == stream_s and r["reached"]), None)


def reached_lengths(rows: list[dict[str, Any]], mode: str) -> list[float]:
    """Stream lengths at which ``mode`` answered, ascending."""
    return sorted(r["stream_s"] for r in rows if r["mode"] == mode and r["reached"])


def check(passed: bool | None, measured: Any, note: str = "", **extra: Any) -> dict[str, Any]:
    """A target entry: ``{"pass": True/False/None (not measurable), "measured": ..., "note": ...}``."""
    return {"pass": passed, "measured": measured, "note": note, **extra}
