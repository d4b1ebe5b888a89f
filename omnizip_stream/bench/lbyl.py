"""Listen before you look in the prefill benchmark: a clip replayed as stream windows, per window and per clip.

``scripts/bench_prefill.py`` times the offline path, where one encode of the whole clip is shared by
every method, so the vision tower's work is the same for all of them. ``vision_budget: audio``
changes that work, and it exists in streaming mode only, so each requested method also replays the
clip as 2-s windows through :class:`~omnizip_stream.engine.StreamEngine` (encode -> compress ->
prefill into the rolling cache, as a live stream does). Reported from the engine's own counters
(``WindowReport.timings_ms``): per window (p50) and per clip (sums) the vision-encoder time
(``video_encode_ms``), the patches it encoded (``video_patches``) and the whole window time
(``total_ms``: encode + compress + prefill), and each method's ratios to ``full``.

Targets (issue 17, reported, not asserted): vision patches at the 35 % setting <= 0.6x of full;
whole-window time at the 35 % setting <= 0.5x of full on ``small`` and <= 0.7x on the tiny models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from omnizip_stream.bench.env import percentiles
from omnizip_stream.bench.modes import LBYL_SUFFIX, Mode
from omnizip_stream.bench.summary import check

WINDOW_S = 2.0
STAGES = ("audio_encode_ms", "video_encode_ms", "compress_ms", "prefill_ms", "total_ms", "video_patches")


def clip_windows(audio: np.ndarray, frames: np.ndarray, fps: float, window_s: float = WINDOW_S) -> list[Any]:
    """Cut a clip (audio ``[n]`` 16 kHz, frames ``[F, H, W, 3]`` at ``fps``) into whole stream windows."""
    from omnizip_stream.window import SAMPLE_RATE_HZ, Window

    per_audio, per_frames = int(window_s * SAMPLE_RATE_HZ), int(round(window_s * fps))
    n = min(len(audio) // per_audio, len(frames) // per_frames)
    out = []
    for i in range(n):
        f = frames[i * per_frames:(i + 1) * per_frames]
        pts = i * window_s + np.arange(len(f)) / fps
        out.append(Window(i * window_s, audio[i * per_audio:(i + 1) * per_audio], f, pts, duration_s=window_s))
    return out


def stream_clip_case(adapter: Any, windows: list[Any], mode: Mode, *, warmup_windows: int = 1,
                     axes: str | None = None) -> dict[str, Any]:
    """Replay ``windows`` through a fresh engine under ``mode``; per-window p50s and per-clip sums.

    The first ``warmup_windows`` windows run (they are part of the stream) but are left out of the
    p50s and the sums. ``axes``: the ``vision_budget_axes`` of a ``-lbyl`` mode (``temporal``,
    ``spatial``, ``both``); the row is then named ``<mode>[<axes>]`` unless ``axes`` is ``both``.
    """
    from omnizip_stream.config import StreamConfig
    from omnizip_stream.engine import StreamEngine

    n_tokens = 400 * (len(windows) + 2)  # no eviction inside one clip
    lbyl = mode.name.endswith(LBYL_SUFFIX)
    changes = {"vision_budget_axes": axes} if lbyl and axes is not None else {}
    config = StreamConfig().replace(method=mode.method, rho_audio=mode.rho_audio, rho_video=mode.rho_video,
                                    window_s=WINDOW_S, cache_max_tokens=n_tokens, cache_max_mb=64 * 1024.0,
                                    **changes)
    engine = StreamEngine(adapter, config)
    name = mode.name if not changes or axes == "both" else f"{mode.name}[{axes}]"
    per_window = []
    for window in windows:
        report = engine.ingest(window)
        per_window.append({k: float(report.timings_ms.get(k, 0.0)) for k in STAGES}
                          | {"video_tokens": report.video_tokens, "video_kept": report.video_kept})
    timed = per_window[warmup_windows:] or per_window
    video_total = sum(w["video_tokens"] for w in per_window)
    return {
        "method": name, "compressor": mode.method, "rho_audio": mode.rho_audio, "rho_video": mode.rho_video,
        "vision_budget_axes": (axes or "both") if lbyl else None, "path": "stream-windows", "window_s": WINDOW_S,
        "windows": len(per_window), "windows_timed": len(timed),
        **{f"{k}_p50": percentiles([w[k] for w in timed])["p50"] for k in STAGES},
        **{f"{k}_clip": sum(w[k] for w in timed) for k in STAGES},
        "video_kept_ratio": sum(w["video_kept"] for w in per_window) / video_total if video_total else None,
        "per_window": per_window,
    }


def ratios_to_full(rows: list[dict[str, Any]]) -> None:
    """Add ``*_vs_full`` ratios (patches, vision time, window time; per clip) to each row, in place."""
    for row in rows:
        full = next((r for r in rows if r["model"] == row["model"] and r["clip_s"] == row["clip_s"]
                     and r["method"] == "full"), None)
        for key in ("video_patches", "video_encode_ms", "total_ms"):
            ref = full[f"{key}_clip"] if full else None
            row[f"{key}_vs_full"] = row[f"{key}_clip"] / ref if ref else None


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 17's targets (reported, not asserted) for each model on its longest clip, 35 % setting."""
    out: dict[str, Any] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        longest = max(r["clip_s"] for r in mine)
        time_target = 0.5 if model == "small" else 0.7
        for method in ("omnizip-35", f"omnizip-35{LBYL_SUFFIX}"):
            row = next((r for r in mine if r["clip_s"] == longest and r["method"] == method), None)
            name = f"{model}_{method}_{longest:g}s"
            if row is None or row.get("video_patches_vs_full") is None:
                out[f"{name}_patches"] = check(None, None, f"needs full and {method} on this clip", target="<= 0.6x")
                continue
            patches, window = row["video_patches_vs_full"], row["total_ms_vs_full"]
            out[f"{name}_patches"] = check(patches <= 0.6, patches, "vision-tower patches / full (per clip)",
                                           target="<= 0.6x")
            out[f"{name}_window_time"] = check(window <= time_target, window,
                                               "whole-window time / full (per clip, sums of total_ms)",
                                               target=f"<= {time_target}x")
    return out


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per row: per-window p50s and per-clip ratios to full."""
    lines = []
    for r in rows:
        def ratio(key: str, row: dict[str, Any] = r) -> str:
            value = row.get(f"{key}_vs_full")
            return "-" if value is None else f"{value:.2f}x"
        lines.append(
            f"{r['model']} {r['clip_s']:g}s {r['method']}: per window p50 vision {r['video_encode_ms_p50']:.0f} ms, "
            f"{r['video_patches_p50']:.0f} patches, window {r['total_ms_p50']:.0f} ms; per clip vs full: "
            f"patches {ratio('video_patches')}, vision {ratio('video_encode_ms')}, window {ratio('total_ms')}"
        )
    return lines


__all__ = ["clip_windows", "ratios_to_full", "stream_clip_case", "summary_lines", "targets"]
