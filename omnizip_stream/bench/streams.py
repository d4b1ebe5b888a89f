"""How many live streams one model serves: ``omnizip bench --streams 1,2,4,8,16,32``.

For each stream count ``N`` the benchmark runs two phases on one :class:`~omnizip_stream.server.ModelWorker`
(one loaded model, one model thread):

* **Real time.** ``N`` streams, each fed its own synthetic windows at their real-time end (a live
  source delivers window ``k`` when its last sample is captured, at ``(k + 1) * window_s`` after the
  stream's start; stream ``i`` starts ``i / N`` of a window after stream 0), for ``duration_s`` seconds; every stream asks one question every ``question_every_s``
  seconds (staggered across streams), one at a time. Measured: per-window latency (the window's end
  at the source to its ingestion), question TTFT under load (``Answer.ttft_ms``: submission to the
  first token), video shed by the session (``video_dropped``), each stream's cache memory and the
  process RSS growth per stream. A stream is **in real time** when it shed no video, every window
  was ingested and every window after the warm-up one was ingested within one window of its end.
  With standing questions (``watches``, used by ``omnizip bench --watches``) every stream also
  evaluates them after each window as the server does; it is **sustained** when it is in real time
  and its questions were evaluated after every window (none deferred, none failed).
* **Throughput.** ``N`` streams with ``throughput_windows`` windows each, all queued at once (fed as
  fast as possible, no pacing, no shedding): windows per second, one window at a time
  (``max_batch=1``) and batched (``max_batch``), in the same run, when the worker batches; the two
  runs alternate ``throughput_repeats`` times and the medians are reported (the speedup is the median
  of the pairs' ratios, each pair measured back to back, so load that comes and goes on a shared
  machine touches both sides of a ratio alike).

The windows are rendered beforehand by the synthetic source (``synthetic:seed=S,size=WxH``, as fast as
consumed, at most :data:`DISTINCT_SOURCES` different seeds, reused across streams) and released by
the benchmark on the real-time schedule: rendering is not in the measured CPU budget. Frames are fed
at their native size (``video_max_pixels`` = width x height unless the config sets it).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from omnizip_stream.bench.env import environment, load_average, percentiles, rss_mb, trim_memory
from omnizip_stream.bench.models import model_info
from omnizip_stream.config import StreamConfig
from omnizip_stream.server import ModelWorker
from omnizip_stream.window import Window

logger = logging.getLogger(__name__)

DISTINCT_SOURCES = 8
MIN_THROUGHPUT_WINDOWS = 16  # per throughput run, whatever the count (one stream's 3 windows time nothing)
TARGET_REALTIME_STREAMS = 24
TARGET_BATCH_SPEEDUP_AT_8 = 1.5
TARGET_TTFT_P95_RATIO_16 = 3.0


@dataclass(frozen=True)
class StreamsSettings:
    """What ``omnizip bench --streams`` runs.

    Attributes:
        counts: stream counts, ascending.
        stream: every stream's configuration (model, method, caps).
        duration_s: seconds of real time per count (rounded up to whole windows).
        question_every_s: seconds between two questions of one stream (0: no questions).
        question: the question asked.
        max_new_tokens: answer length of a question.
        throughput_windows: windows per stream in the throughput phase (at least
            :data:`MIN_THROUGHPUT_WINDOWS` in all).
        max_batch: windows/questions per batch of the batched throughput run (and of the real-time phase).
        throughput_repeats: alternating one-at-a-time / batched throughput pairs per count (medians reported).
        frame_size: ``(width, height)`` of the synthetic frames.
        warmup_windows: each stream's first windows left out of the real-time verdict and latencies.
    """

    counts: tuple[int, ...]
    stream: StreamConfig
    duration_s: float = 20.0
    question_every_s: float = 6.0
    question: str = "What is happening right now?"
    max_new_tokens: int = 4
    throughput_windows: int = 4
    max_batch: int = 8
    throughput_repeats: int = 3
    frame_size: tuple[int, int] = (160, 120)
    warmup_windows: int = 1

    @property
    def window_s(self) -> float:
        """The stream window length in seconds (``stream`` resolved on the model: :func:`run_streams_benchmark`)."""
        window_s = self.stream.window_s
        assert window_s is not None, "resolve the stream config on the model first (StreamConfig.for_model)"
        return float(window_s)


def make_worker(adapter: Any, config: StreamConfig, max_batch: int) -> ModelWorker:
    """A worker on the shared adapter that batches up to ``max_batch`` streams per model call."""
    return ModelWorker(config, adapter=adapter, max_batch=max_batch)


async def render_windows(seed: int, settings: StreamsSettings, n_windows: int) -> list[Window]:
    """``n_windows`` windows of the synthetic source ``seed`` (rendered as fast as consumed)."""
    from omnizip_stream.sources import open_windows

    w, h = settings.frame_size
    out: list[Window] = []
    async with open_windows(f"synthetic:seed={seed},size={w}x{h}", window_s=settings.window_s, realtime=False,
                            duration_s=n_windows * settings.window_s, max_side=None) as windows:
        async for window in windows:
            out.append(window)
    return out[:n_windows]


async def _sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.perf_counter()))


async def realtime_phase(adapter: Any, settings: StreamsSettings, n: int, sources: list[list[Window]], *,
                         watches: Sequence[Any] = (), alerts_dir: str | None = None) -> dict[str, Any]:
    """``n`` paced streams with questions; the row's real-time, latency, TTFT and memory fields.

    Args:
        adapter: the loaded model (shared by the worker).
        settings: the stream config, pacing, questions and batching.
        n: how many streams.
        sources: windows per source; stream ``i`` replays ``sources[i % len(sources)]``.
        watches: standing questions (:class:`~omnizip_stream.watch.spec.WatchSpec`) registered on every
            stream; the row then has the ``watch_*`` fields and ``sustained`` / ``streams_sustained``.
        alerts_dir: where their alerts are logged (as a server does); None: the default alert directory.
    """
    window_s = settings.window_s
    n_windows = len(sources[0])
    trim_memory()
    rss_before = rss_mb()
    latencies: list[list[float]] = [[] for _ in range(n)]
    ttft_ms: list[float] = []
    failed: list[str] = []
    async with make_worker(adapter, settings.stream, settings.max_batch) as worker:
        sessions = [await worker.add_stream(f"s{i}", settings.stream) for i in range(n)]
        if watches:
            from omnizip_stream.watch.setup import install_watches

            for session in sessions:
                if install_watches(session, watches, log_dir=alerts_dir):
                    raise ValueError(f"the stream refused a standing question (see the log): {watches}")
        t0 = time.perf_counter() + 0.05
        # Stream i started i/n of a window after stream 0 (cameras are not phase-locked).
        starts = [t0 + window_s * i / n for i in range(n)]

        async def feed(i: int) -> None:
            for window in sources[i % len(sources)]:
                await _sleep_until(starts[i] + window.t1_s)
                await sessions[i].push_window(window)

        async def watch(i: int) -> None:
            for k, window in enumerate(sources[i % len(sources)]):
                await sessions[i].wait_windows(count=k + 1)
                latencies[i].append(time.perf_counter() - (starts[i] + window.t1_s))

        async def ask(i: int) -> None:
            if settings.question_every_s <= 0:
                return
            t = starts[i] + window_s + 0.1 + settings.question_every_s * i / n  # once the first window is in
            while t < starts[i] + n_windows * window_s:
                await _sleep_until(t)
                try:
                    answer = await sessions[i].ask(settings.question, settings.max_new_tokens)
                    ttft_ms.append(answer.ttft_ms)
                except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                    failed.append(f"{type(exc).__name__}: {exc}")
                t = max(t + settings.question_every_s, time.perf_counter())

        tasks = [f(i) for i in range(n) for f in (feed, watch, ask)]
        limit_s = 3 * n_windows * window_s + 60
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=limit_s)
        except asyncio.TimeoutError:
            timed_out = True
        if watches and not timed_out:  # the last window's standing questions
            try:
                await asyncio.wait_for(asyncio.gather(*(s.drain() for s in sessions)), timeout=limit_s)
            except asyncio.TimeoutError:
                timed_out = True
        stats = [s.stats() for s in sessions]
        rss_after = rss_mb()
    warm = settings.warmup_windows
    per_stream_ok = [
        not timed_out and st.get("video_dropped", 0) == 0 and st.get("windows_video_stripped", 0) == 0
        and len(lat) == n_windows and all(x < window_s for x in lat[warm:])
        for st, lat in zip(stats, latencies, strict=True)
    ]
    measured = [x for lat in latencies for x in lat[warm:]]
    by_window = [[lat[k] for lat in latencies if len(lat) > k] for k in range(warm, n_windows)]
    mean_lag_s = [sum(v) / len(v) for v in by_window if v]
    row_watches = _watch_fields(stats, per_stream_ok, len(watches)) if watches else {}
    cache_mb = [((st.get("kv_bytes") or 0) + (st.get("store_bytes") or 0)) / 2**20 for st in stats]
    return {
        "streams": n,
        "realtime": all(per_stream_ok),
        "streams_realtime": sum(per_stream_ok),
        "windows_per_stream": n_windows,
        "windows_ingested": sum(st.get("windows_ingested", 0) for st in stats),
        "video_dropped": sum(st.get("video_dropped", 0) for st in stats),
        "window_latency_ms": {k: None if v is None else v * 1e3 for k, v in
                              {**percentiles(measured, (50, 95)), "max": max(measured, default=None)}.items()},
        "window_lag_ms_by_window": [x * 1e3 for x in mean_lag_s],
        "lag_trend_ms_per_window": None if len(mean_lag_s) < 2 else slope(mean_lag_s) * 1e3,
        "ttft_ms": percentiles(ttft_ms, (50, 95)),
        "questions": len(ttft_ms),
        "questions_failed": len(failed),
        "question_errors": sorted(set(failed))[:3],
        "cache_mb_per_stream": sum(cache_mb) / n,
        "rss_mb_per_stream": (rss_after - rss_before) / n,
        "timed_out": timed_out,
        **row_watches,
    }


def slope(values: list[float]) -> float:
    """Least-squares slope of ``values`` against their index (per step; needs at least two values)."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    return num / sum((x - mean_x) ** 2 for x in range(n))


def _watch_fields(stats: list[dict[str, Any]], realtime_ok: list[bool], k: int) -> dict[str, Any]:
    """The real-time row's standing-question fields: totals, and which streams were sustained."""
    def total(name: str) -> int:
        return sum(int(st.get(name) or 0) for st in stats)

    sustained = [
        ok and st.get("watch_deferred", 0) == 0 and st.get("watch_failed", 0) == 0
        and st.get("watch_evaluations", 0) == k * st.get("windows_ingested", 0)
        for st, ok in zip(stats, realtime_ok, strict=True)
    ]
    return {
        "watches_per_stream": k, "watch_evaluations": total("watch_evaluations"),
        "watch_evaluations_expected": k * total("windows_ingested"), "watch_deferred": total("watch_deferred"),
        "watch_failed": total("watch_failed"), "watch_alerts": total("watch_alerts"),
        "sustained": all(sustained), "streams_sustained": sum(sustained),
    }


async def throughput_phase(adapter: Any, settings: StreamsSettings, n: int, sources: list[list[Window]],
                           max_batch: int) -> float:
    """Windows per second of ``n`` streams whose windows are all queued at once (``max_batch`` per batch)."""
    per_stream = throughput_windows_per_stream(settings, n)
    config = settings.stream.replace(window_queue=max(per_stream, settings.stream.window_queue))
    async with make_worker(adapter, config, max_batch) as worker:
        sessions = [await worker.add_stream(f"s{i}", config) for i in range(n)]
        t0 = time.perf_counter()
        for k in range(per_stream):
            for i, session in enumerate(sessions):
                await session.push_window(sources[i % len(sources)][k])
        await asyncio.gather(*(s.drain() for s in sessions))
        wall_s = time.perf_counter() - t0
    return n * per_stream / wall_s


async def _throughput(adapter: Any, settings: StreamsSettings, n: int, sources: list[list[Window]], batched: bool,
                      progress: Any) -> dict[str, Any]:
    """The row's throughput fields: medians over ``throughput_repeats`` alternating pairs."""
    singles: list[float] = []
    multis: list[float] = []
    for k in range(settings.throughput_repeats):
        progress(f"{n} stream(s): throughput {k + 1}/{settings.throughput_repeats}")
        singles.append(await throughput_phase(adapter, settings, n, sources, 1))
        if batched:
            multis.append(await throughput_phase(adapter, settings, n, sources, settings.max_batch))
    ratios = [m / s for s, m in zip(singles, multis, strict=False)]  # empty without batching
    return {
        "one_at_a_time": statistics.median(singles), "batched": statistics.median(multis) if multis else None,
        "speedup": statistics.median(ratios) if ratios else None, "speedups": ratios,
        "one_at_a_time_runs": singles, "batched_runs": multis, "realtime_demand": n / settings.window_s,
    }


def throughput_windows_per_stream(settings: StreamsSettings, n: int) -> int:
    """Windows each of ``n`` streams gets in the throughput phase."""
    return max(settings.throughput_windows, -(-MIN_THROUGHPUT_WINDOWS // n))


async def _warm_up(adapter: Any, settings: StreamsSettings, windows: list[Window]) -> None:
    """One unrecorded stream: two windows and a question (first-call costs out of the first count)."""
    async with make_worker(adapter, settings.stream, 1) as worker:
        session = await worker.add_stream("warm-up", settings.stream)
        for window in windows[:2]:
            await session.push_window(window)
        await session.drain()
        await session.ask(settings.question, settings.max_new_tokens)


async def _run(adapter: Any, settings: StreamsSettings, progress: Any) -> tuple[list[dict[str, Any]], bool]:
    window_s = settings.window_s
    n_rt = max(2, int(-(-settings.duration_s // window_s)))
    n_windows = max(n_rt, throughput_windows_per_stream(settings, min(settings.counts)))
    distinct = min(max(settings.counts), DISTINCT_SOURCES)
    sources = [await render_windows(seed, settings, n_windows) for seed in range(distinct)]
    realtime_sources = [s[:n_rt] for s in sources]
    await _warm_up(adapter, settings, sources[0])
    batched = settings.max_batch > 1
    rows = []
    for n in settings.counts:
        progress(f"{n} stream(s): real time, {n_rt * window_s:g} s")
        row = await realtime_phase(adapter, settings, n, realtime_sources)
        row["throughput_windows_per_s"] = await _throughput(adapter, settings, n, sources, batched, progress)
        rows.append(row)
    return rows, batched


def streams_targets(rows: list[dict[str, Any]], batched: bool) -> dict[str, dict[str, Any]]:
    """The issue's capacity targets, from this run (``pass`` None where the run lacks the counts)."""
    by_n = {r["streams"]: r for r in rows}
    realtime = [r["streams"] for r in rows if r["realtime"]]
    best = max(realtime, default=0)
    reached = max(by_n) >= TARGET_REALTIME_STREAMS
    out: dict[str, dict[str, Any]] = {
        "realtime_streams": {
            "target": f">= {TARGET_REALTIME_STREAMS} streams in real time", "measured": best,
            "pass": (best >= TARGET_REALTIME_STREAMS) if reached or best >= TARGET_REALTIME_STREAMS else None,
            "note": "largest stream count of this run whose every stream stayed in real time",
        },
    }
    r8 = by_n.get(8)
    speedup = r8["throughput_windows_per_s"]["speedup"] if r8 else None
    out["batched_over_one_at_a_time_at_8"] = {
        "target": f">= {TARGET_BATCH_SPEEDUP_AT_8}x windows/s at 8 streams", "measured": speedup,
        "pass": None if speedup is None else speedup >= TARGET_BATCH_SPEEDUP_AT_8,
        "note": "" if batched else "this build's ModelWorker does not batch across streams (no max_batch)",
    }
    r1, r16 = by_n.get(1), by_n.get(16)
    ratio = None
    if r1 and r16 and r1["ttft_ms"]["p95"] and r16["ttft_ms"]["p95"] is not None:
        ratio = r16["ttft_ms"]["p95"] / r1["ttft_ms"]["p95"]
    out["ttft_p95_16_over_1"] = {
        "target": f"<= {TARGET_TTFT_P95_RATIO_16}x", "measured": ratio,
        "pass": None if ratio is None else ratio <= TARGET_TTFT_P95_RATIO_16, "note": "question TTFT p95 under load",
    }
    return out


def run_streams_benchmark(adapter: Any, model: str, settings: StreamsSettings,
                          progress: Any = None) -> dict[str, Any]:
    """Run every stream count; the JSON-ready report (``results`` one row per count, ``targets``)."""
    settings = replace(settings, stream=settings.stream.for_model(adapter.spec))  # window_s: the model's
    env = environment(adapter.device)
    t0 = time.perf_counter()
    rows, batched = asyncio.run(_run(adapter, settings, progress or (lambda _msg: None)))
    return {
        "benchmark": "omnizip bench --streams: live streams served by one model",
        "environment": env,
        "model": model_info(adapter, model),
        "batching_available": batched,
        "config": {
            "counts": list(settings.counts), "duration_s": settings.duration_s, "window_s": settings.window_s,
            "question_every_s": settings.question_every_s, "question": settings.question,
            "max_new_tokens": settings.max_new_tokens, "throughput_windows": settings.throughput_windows,
            "max_batch": settings.max_batch,
            "throughput_repeats": settings.throughput_repeats, "frame_size": list(settings.frame_size),
            "warmup_windows": settings.warmup_windows, "stream_config": asdict(settings.stream),
        },
        "definitions": DEFINITIONS,
        "notes": [
            "windows are rendered by the synthetic source before the run and released on the real-time schedule, so "
            "source decoding is not in the measured CPU budget; frames go in at their native size unless the config "
            "sets video_max_pixels",
            "stream i starts i/N of a window after stream 0 (live cameras are not phase-locked), so the windows of "
            "a count arrive spread over each window period rather than all at once",
            "a question asked before its stream's first window is ingested waits first_window_wait_s, then fails "
            "(not_ready): counted in questions_failed",
            "the 1-stream TTFT has duration_s / question_every_s samples: its p95 (the baseline of "
            "ttft_p95_16_over_1) is close to its maximum",
            "throughput runs queue at least 16 windows in all; on a shared machine compare ratios within one run, and "
            "read the load averages (environment, load_average_end)",
        ],
        "results": rows,
        "targets": streams_targets(rows, batched),
        "wall_s": time.perf_counter() - t0,
        "load_average_end": load_average(),
    }


DEFINITIONS = {
    "realtime": "every stream shed no video (video_dropped == 0), got every window ingested, and every window after "
                "the warm-up ones was ingested less than one window after its end at the source",
    "window_latency_ms": "a window's end at the (paced) source to its ingestion into the stream's cache, all streams",
    "window_lag_ms_by_window": "mean window latency over the streams, per window index after the warm-up ones",
    "lag_trend_ms_per_window": "least-squares slope of window_lag_ms_by_window: > 0 while the model falls behind",
    "ttft_ms": "question submission to its first token (Answer.ttft_ms), one question per stream every "
               "question_every_s, under the load of the count",
    "cache_mb_per_stream": "KV cache plus stored embeddings per stream at the end of the real-time phase",
    "rss_mb_per_stream": "process RSS growth over the real-time phase (streams added, run) divided by the count",
    "throughput_windows_per_s": "windows ingested per second with every stream's windows queued at once; "
                                "realtime_demand is what the count needs live (streams / window_s); medians of "
                                "throughput_repeats alternating runs, speedup the median of the pairs' ratios "
                                "(speedups: each pair's)",
}
