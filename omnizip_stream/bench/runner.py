"""Replay a stream through one mode and record what the pipeline reports, window by window.

Windows come from the real sources (:func:`omnizip_stream.sources.open_windows`, not paced:
``realtime=False``) and are handed to one model thread one at a time: each window is pushed when the
previous one has been ingested, so the stream runs as fast as the pipeline allows and no video is
shed. At each checkpoint (stream length in seconds) the mode answers the same question a few times.

Timings are the pipeline's own counters (``WindowReport.timings_ms``, ``QueryResult.ttft_ms``,
``ClipAnswer.*_ms``); this module adds only the process RSS read after each window and the
ring-buffer append time of the reprefill modes (which do no other work per window), and the peak
memory during each checkpoint's queries (:class:`~omnizip_stream.bench.env.PeakRss`, sampled every 5 ms).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omnizip import OmniZipConfig, make_compressor
from omnizip.adapters.base import AVCursor
from omnizip.types import Modality
from omnizip_stream.bench.env import PeakRss, load_average, rss_mb, synchronize, trim_memory
from omnizip_stream.bench.modes import Mode
from omnizip_stream.config import StreamConfig
from omnizip_stream.engine import StreamEngine
from omnizip_stream.window import Window
from omnizip_stream.windowing import on_grid

logger = logging.getLogger(__name__)

STAGES = ("audio_encode_ms", "video_encode_ms", "compress_ms", "prefill_ms", "total_ms")


@dataclass(frozen=True)
class RunSettings:
    """How a mode is replayed and queried.

    Attributes:
        source: ``synthetic[:opts]`` or ``file:PATH`` (a file is looped to reach the longest checkpoint).
        checkpoints_s: stream lengths (seconds) at which queries are timed, ascending.
        stream: the engine configuration (method and rhos are replaced per mode).
        question: the question asked at every checkpoint.
        max_new_tokens: answer budget of a query.
        query_repeats: timed queries per checkpoint (streaming modes; the median is reported).
        query_warmup: discarded queries before the timed ones (both kinds of modes).
        reprefill_repeats: timed queries per checkpoint of a reprefill mode (each re-encodes the history).
        reprefill_budget_tokens: token budget of the reprefill ring buffer (see :class:`ReprefillRunner`).
        max_side: frames are scaled at decode so their longer side is at most this.
    """

    source: str
    checkpoints_s: tuple[float, ...]
    stream: StreamConfig
    question: str = "What is happening in the video right now?"
    max_new_tokens: int = 16
    query_repeats: int = 5
    query_warmup: int = 1
    reprefill_repeats: int = 1
    reprefill_budget_tokens: int = 32768
    max_side: int = 640


@dataclass
class ModeRecord:
    """Everything measured for one mode (JSON-ready through :func:`dataclasses.asdict`)."""

    mode: str
    kind: str
    windows: list[dict[str, Any]] = field(default_factory=list)
    queries: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class StreamingRunner:
    """A mode on the real :class:`StreamEngine` (rolling capped KV cache, KV reuse across queries)."""

    def __init__(self, adapter: Any, mode: Mode, settings: RunSettings) -> None:
        self.adapter = adapter
        self.settings = settings
        self.config = settings.stream.replace(method=mode.method, rho_audio=mode.rho_audio,
                                              rho_video=mode.rho_video)
        self.engine = StreamEngine(adapter, self.config)

    def info(self) -> dict[str, Any]:
        """Static facts of the run (the resolved cache caps)."""
        cache = self.engine.cache
        return {"cache_max_tokens": cache.max_tokens, "reserve_tokens": cache.reserve_tokens,
                "kv_bytes_per_token": cache.kv_bytes_per_token, "store_bytes_per_token": cache.store_bytes_per_token}

    def on_window(self, window: Window) -> dict[str, Any]:
        """Ingest one window; return its record (timings from the engine, cache sizes, RSS)."""
        report = self.engine.ingest(window)
        stats = self.engine.stats()
        t = report.timings_ms
        return {
            "t_s": round(report.t1_s, 3),
            **{k: round(t.get(k, 0.0), 3) for k in STAGES},
            "encode_ms": round(t.get("encode_ms", 0.0), 3),
            "audio_tokens": report.audio_tokens, "audio_kept": report.audio_kept,
            "video_tokens": report.video_tokens, "video_kept": report.video_kept,
            "video_patches": int(t.get("video_patches", 0)),  # vision-tower patches encoded (lbyl: fewer)
            "evicted": len(report.evicted),
            "kv_tokens": stats["kv_tokens"],
            "kv_mb": stats["kv_bytes"] / 2**20,
            "store_mb": stats["store_bytes"] / 2**20,
            "windows_evicted": stats["windows_evicted"], "reanchors": stats["reanchors"],
            "rss_mb": rss_mb(),
        }

    def query(self) -> dict[str, Any]:
        """Warm-up, then ``query_repeats`` timed answers from the current cache (restored after each)."""
        s = self.settings
        runs = []
        for i in range(s.query_warmup + s.query_repeats):
            res = self.engine.answer(s.question, s.max_new_tokens)
            if i >= s.query_warmup:
                runs.append(res)
        last = runs[-1]
        history = (last.time_range_s[1] - last.time_range_s[0]) if last.time_range_s else 0.0
        return {
            "ttft_ms_runs": [r.ttft_ms for r in runs],
            "total_ms_runs": [r.total_ms for r in runs],
            "answer_tokens": [len(r.tokens) for r in runs],
            "prompt_tokens": int(self.engine.stats()["kv_tokens"]) + last.prompt_tokens,
            "history_s": history,
            "window_range": list(last.window_range) if last.window_range else None,
        }


class ReprefillRunner:
    """No KV reuse: a ring buffer of raw windows, re-encoded and re-prefilled by every query.

    The ring holds the most recent windows whose *prefilled* tokens fit ``reprefill_budget_tokens``
    minus the query reserve and the chat text: by default the model's context (32768 positions for
    Qwen2.5-Omni), as a serving stack whose ring buffer must fit ``max_model_len``. Tokens per window
    are counted by encoding the first window once (untimed); with OmniZip they are estimated as
    ``audio * (1 - rho_audio) + video * (1 - rho_video)`` (the offline budget). A query runs the
    offline path on the ring's audio and frames as one clip (:func:`omnizip.qa.answer_clip`; OmniZip
    in its reference offline mode with global audio saliency).
    """

    def __init__(self, adapter: Any, mode: Mode, settings: RunSettings) -> None:
        self.adapter = adapter
        self.mode = mode
        self.settings = settings
        window_s = settings.stream.window_s
        assert window_s is not None, "resolve the stream config on the model first (StreamConfig.for_model)"
        self.window_s = window_s
        cfg = OmniZipConfig(rho_audio=mode.rho_audio, rho_video=mode.rho_video, mode="offline", saliency="global",
                            seed=settings.stream.seed)
        self.compressor = make_compressor(mode.method, cfg)
        self.ring: collections.deque[Window] = collections.deque()
        self.capacity: int | None = None
        self.tokens_per_window: float | None = None
        self.full_tokens_per_window: dict[str, int] = {}
        self.dropped = 0

    def info(self) -> dict[str, Any]:
        """The ring's sizing (windows, seconds, tokens per window)."""
        return {"ring_windows": self.capacity,
                "ring_s": self.capacity * self.window_s if self.capacity else None,
                "budget_tokens": self.settings.reprefill_budget_tokens,
                "tokens_per_window_estimate": self.tokens_per_window,
                "full_tokens_per_window": self.full_tokens_per_window}

    def _size_ring(self, window: Window) -> None:
        spec = self.adapter.spec
        window = on_grid(window, spec.fps, self.window_s)
        audio, frames = window.audio, window.frames
        enc = self.adapter.encode_av(audio if audio.size else None, frames if len(frames) else None,
                                     AVCursor(base=0), saliency=None)
        n_a = int((enc.layout.modality == int(Modality.AUDIO)).sum())
        n_v = int((enc.layout.modality == int(Modality.VIDEO)).sum())
        self.full_tokens_per_window = {"audio": n_a, "video": n_v}
        per = n_a * (1 - self.mode.rho_audio) + n_v * (1 - self.mode.rho_video)
        self.tokens_per_window = per
        parts = self.adapter.prompt_parts(self.settings.question)
        text = len(parts.prefix) + len(parts.suffix) + 8
        room = self.settings.reprefill_budget_tokens - self.settings.stream.query_reserve_tokens - text
        self.capacity = max(1, int(room // max(per, 1.0)))

    def on_window(self, window: Window) -> dict[str, Any]:
        """Buffer one raw window (dropping the oldest beyond the ring's capacity)."""
        if self.capacity is None:
            self._size_ring(window)
        t0 = time.perf_counter()
        self.ring.append(window)
        evicted = 0
        while len(self.ring) > (self.capacity or 1):
            self.ring.popleft()
            evicted += 1
        self.dropped += evicted
        append_ms = (time.perf_counter() - t0) * 1e3
        nbytes = sum(w.audio.nbytes + w.frames.nbytes for w in self.ring)
        return {
            "t_s": round(window.t0_s + self.window_s, 3),
            **dict.fromkeys(STAGES, 0.0), "total_ms": round(append_ms, 4), "encode_ms": 0.0,
            "evicted": evicted, "kv_tokens": 0, "kv_mb": 0.0, "store_mb": nbytes / 2**20,
            "windows_evicted": self.dropped, "reanchors": 0, "rss_mb": rss_mb(),
        }

    def _clip(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        fps = self.adapter.spec.fps
        windows = list(self.ring)
        gridded = [on_grid(w, fps, self.window_s) for w in windows]
        audio = [w.audio for w in gridded]
        frames = [w.frames for w in gridded]
        a = np.concatenate(audio) if all(x.size for x in audio) else None
        f = np.concatenate(frames) if all(len(x) for x in frames) else None
        return a, f

    def query(self) -> dict[str, Any]:
        """Re-encode and re-prefill the ring: ``query_warmup`` discarded, then ``reprefill_repeats`` timed.

        The warm-up is a full-size query: the first query at a new clip length was measured up to 2x
        slower than the next ones (first-call costs of the preprocessing at that size).
        """
        from omnizip.qa import answer_clip

        s = self.settings
        runs = []
        for i in range(s.query_warmup + s.reprefill_repeats):
            audio, frames = self._clip()
            res = answer_clip(self.adapter, audio, frames, s.question, self.compressor,
                              max_new_tokens=s.max_new_tokens, video_fps=self.adapter.spec.fps)
            if i >= s.query_warmup:
                runs.append(res)
        last = runs[-1]
        ttft = [r.encode_ms + r.compress_ms + r.prefill_ms for r in runs]
        return {
            "ttft_ms_runs": ttft,
            "total_ms_runs": [t + r.decode_ms for t, r in zip(ttft, runs, strict=True)],
            "answer_tokens": [r.generated_tokens for r in runs],
            "prompt_tokens": last.tokens_kept,
            "history_s": len(self.ring) * self.window_s,
            "window_range": None,
            "stages_ms": {"encode_ms": last.encode_ms, "compress_ms": last.compress_ms,
                          "prefill_ms": last.prefill_ms, "decode_ms": last.decode_ms},
            "tokens_kept_ratio": (last.audio_tokens_kept + last.video_tokens_kept)
            / max(1, last.audio_tokens_total + last.video_tokens_total),
            "audio_kept_ratio": last.audio_tokens_kept / max(1, last.audio_tokens_total),
            "video_kept_ratio": last.video_tokens_kept / max(1, last.video_tokens_total),
        }


def make_runner(adapter: Any, mode: Mode, settings: RunSettings) -> StreamingRunner | ReprefillRunner:
    """The runner of ``mode``."""
    if mode.kind == "streaming":
        return StreamingRunner(adapter, mode, settings)
    return ReprefillRunner(adapter, mode, settings)


async def warm_up(adapter: Any, settings: RunSettings, executor: concurrent.futures.Executor,
                  windows: int = 4) -> None:
    """Run the first ``windows`` windows through a throwaway engine plus a query and a reprefill query.

    Nothing is recorded: the first mode should not pay for lazy initialisation (kernels, allocator).
    """
    from omnizip_stream.sources import open_windows

    loop = asyncio.get_running_loop()
    warm = dataclasses.replace(settings, query_repeats=1, reprefill_repeats=1)
    streaming = await loop.run_in_executor(executor, StreamingRunner, adapter, Mode("warm-up", "streaming", "omnizip",
                                                                                    0.3, 0.6), warm)
    reprefill = ReprefillRunner(adapter, Mode("warm-up", "reprefill", "identity"), warm)
    window_s = reprefill.window_s  # resolved on the model (run_benchmark)
    async with open_windows(settings.source, realtime=False, duration_s=windows * window_s, window_s=window_s,
                            fps=adapter.spec.fps, max_side=settings.max_side,
                            loop=not settings.source.strip().lower().startswith("synthetic")) as stream:
        async for window in stream:
            await loop.run_in_executor(executor, streaming.on_window, window)
            await loop.run_in_executor(executor, reprefill.on_window, window)
    await loop.run_in_executor(executor, streaming.query)
    await loop.run_in_executor(executor, reprefill.query)


async def run_mode(
    adapter: Any,
    mode: Mode,
    settings: RunSettings,
    executor: concurrent.futures.Executor,
    on_progress: Callable[[str], None] | None = None,
) -> ModeRecord:
    """Replay the stream through ``mode``; model calls run on ``executor`` (one model thread).

    Args:
        adapter: the loaded model adapter (shared by all modes).
        mode: what to run.
        settings: source, checkpoints, engine config, queries.
        executor: a single-thread executor: the model thread.
        on_progress: called with a short note after every window and query.

    Returns:
        The :class:`ModeRecord` (a checkpoint the source never reached has ``reached: False``).
    """
    from omnizip_stream.sources import open_windows

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(executor, trim_memory)
    record = ModeRecord(mode.name, mode.kind)
    record.info.update({"rss_start_mb": rss_mb(), "load_average_start": load_average()})
    runner = await loop.run_in_executor(executor, make_runner, adapter, mode, settings)
    window_s = settings.stream.window_s
    pending = list(settings.checkpoints_s)
    t_wall = time.perf_counter()
    is_file = not settings.source.strip().lower().startswith("synthetic")
    async with open_windows(settings.source, realtime=False, duration_s=max(pending), window_s=window_s,
                            fps=adapter.spec.fps, max_side=settings.max_side, loop=is_file) as windows:
        async for window in windows:
            row = await loop.run_in_executor(executor, runner.on_window, window)
            record.windows.append(row)
            if on_progress:
                on_progress(f"{mode.name} t={row['t_s']:.0f}s")
            while pending and row["t_s"] + 1e-6 >= pending[0]:
                checkpoint = pending.pop(0)
                await loop.run_in_executor(executor, synchronize, adapter.device)
                with PeakRss(adapter.device, interval_s=0.005) as peak:
                    q = await loop.run_in_executor(executor, runner.query)
                q.update({"stream_s": checkpoint, "at_s": row["t_s"], "reached": True, "rss_mb": rss_mb(),
                          "query_peak_mem_mb": peak.baseline_mb + peak.growth_mb, "query_mem_growth_mb": peak.growth_mb,
                          "query_mem_method": peak.method})
                record.queries.append(q)
                if on_progress:
                    on_progress(f"{mode.name} query at {checkpoint:.0f}s")
            if not pending:
                break
    for checkpoint in pending:
        record.queries.append({"stream_s": checkpoint, "reached": False})
        logger.warning("%s: the source ended before %.0f s of stream", mode.name, checkpoint)
    record.info.update(runner.info())
    record.info.update({"wall_s": time.perf_counter() - t_wall, "load_average_end": load_average(),
                        "rss_end_mb": rss_mb()})
    if not math.isfinite(record.info["rss_start_mb"]):
        record.info["rss_start_mb"] = None
    return record
