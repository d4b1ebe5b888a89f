"""``omnizip bench --watches 0,1,4,16``: what standing questions cost a stream, and how fast alerts arrive.

Three measurements in one run, on the real pipeline (engine, :class:`~omnizip_stream.watch.registry.StreamWatches`,
the MQTT server and a broker):

1. **Per-window cost** with K standing questions per stream (K from ``--watches``): a fresh engine per
   K replays the same windows; after each window the K questions run as the server runs them (one
   batched forward, log included). Reported: ingest ms, watch ms, overhead of the questions in % of
   the window's ingest cost, real-time factor ``(ingest + watch) / window_s`` (means after warm-up).
2. **Alert latency**: one live-paced stream (each window pushed when it is complete, at its end on
   the wall clock) with 4 questions at threshold 0 (every evaluation fires) served by an
   ``MqttQueryServer`` on an embedded broker (or ``--broker``); a subscriber on ``omnizip/<id>/alerts``
   records when each alert arrives. Latency = arrival - end of the window it followed; p50/p95.
3. **Streams sustained in real time with 4 questions each**, measured: ``N`` live-paced streams on one
   :class:`~omnizip_stream.server.ModelWorker` (the server's ``max_batch``), each with 4 standing
   questions (threshold :data:`SUSTAIN_THRESHOLD`, alerts logged) evaluated after every window as the
   server does, windows released at their real-time end (:func:`~omnizip_stream.bench.streams.realtime_phase`,
   no users' questions). A stream is *sustained* when it is in real time (no video shed, every window
   ingested, each after the warm-up one less than one window after its end) **and** its questions were
   evaluated after every window (``watch_deferred`` 0: a stretched period counts as a failure). The
   search starts at the estimate ``floor(window_s / per-window cost with 4)`` from (1) (also reported,
   as an estimate), steps up by a quarter after a sustained count and down by a quarter after a failed
   one, then bisects between the largest sustained and the smallest failed count, within
   ``sustain_range`` and at most ``sustain_trials`` counts. Reported: the largest sustained count, whether
   the next one up failed in this run (``bracketed``; else ``first_failed``), and every count's row with
   its lag trend (a short run can pass a count slightly over capacity while the lag still grows).

Targets (reported, not asserted): 4 questions add <= 30 % to a window's cost; alert p95 <= one window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

QUESTIONS = [
    "Is a dog barking?", "Is someone in the kitchen?", "Is the kettle whistling?", "Is it dark?",
    "Is a door open?", "Is anyone talking?", "Is a baby crying?", "Is there a car?", "Is it raining?",
    "Is music playing?", "Is a phone ringing?", "Is there a fire?", "Is a window broken?", "Is a cat visible?",
    "Is someone running?", "Is the light on?",
]


SUSTAIN_THRESHOLD = 0.5
"""Threshold of the sustained-streams questions: a realistic one (on the tiny model some fire, some do not)."""


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def _windows(source: str, count: int, window_s: float, fps: float, max_side: int) -> list[Any]:
    from omnizip_stream.sources import open_windows

    out = []
    async with open_windows(source, realtime=False, duration_s=count * window_s, window_s=window_s, fps=fps,
                            max_side=max_side, loop=not source.strip().lower().startswith("synthetic")) as stream:
        async for window in stream:
            out.append(window)
    return out


def window_costs(adapter: Any, config: Any, windows: list[Any], counts: list[int], *, warmup: int,
                 log_dir: str) -> dict[str, Any]:
    """Part 1: per-window ingest and standing-question cost for each K in ``counts`` (model thread)."""
    from omnizip_stream.engine import StreamEngine
    from omnizip_stream.watch.log import AlertLog
    from omnizip_stream.watch.registry import StreamWatches
    from omnizip_stream.watch.spec import WatchSpec

    window_s = config.window_s
    rows = {}
    for k in counts:
        engine = StreamEngine(adapter, config)
        watches = StreamWatches(f"bench-{k}", log=AlertLog(log_dir, f"bench-{k}"), max_watches=max(k, 1))
        for n in range(k):
            watches.add(WatchSpec(QUESTIONS[n % len(QUESTIONS)] + ("" if n < len(QUESTIONS) else f" ({n})"),
                                  threshold=1.0))
        ingest_ms, watch_ms = [], []
        for i, window in enumerate(windows):
            t0 = time.perf_counter()
            report = engine.ingest(window)
            t1 = time.perf_counter()
            watches.window_done(report, backlog=0, landed_at=time.time())
            watches.run(engine)
            t2 = time.perf_counter()
            if i >= warmup:
                ingest_ms.append((t1 - t0) * 1e3)
                watch_ms.append((t2 - t1) * 1e3)
        ingest, watch = statistics.fmean(ingest_ms), statistics.fmean(watch_ms)
        rows[str(k)] = {
            "watches": k, "windows_timed": len(ingest_ms), "ingest_ms_mean": ingest, "watch_ms_mean": watch,
            "watch_ms_p95": _pct(watch_ms, 0.95), "window_ms_mean": ingest + watch,
            "overhead_pct": 100.0 * watch / ingest if ingest else None,
            "real_time_factor": (ingest + watch) / 1e3 / window_s,
            "forwards": watches.counters["watch_forwards"],
        }
    return rows


async def alert_latency(adapter: Any, config: Any, windows: list[Any], *, broker_url: str | None) -> dict[str, Any]:
    """Part 2: live-paced stream, 4 questions firing every window, alerts timed on a subscriber."""
    import aiomqtt

    from omnizip_stream.query.broker import EmbeddedBroker
    from omnizip_stream.query.mqtt import MqttConfig, MqttQueryServer
    from omnizip_stream.session import StreamSession
    from omnizip_stream.watch.mqtt import enable_watches
    from omnizip_stream.watch.spec import WatchSpec

    async def measure(url: str, v5: bool) -> dict[str, Any]:
        cfg = MqttConfig.from_url(url, stream_id="bench-watch", protocol="5" if v5 else "3.1.1")
        arrivals: list[tuple[float, dict[str, Any]]] = []
        ended: dict[int, float] = {}
        session = StreamSession(config, adapter=adapter, stream_id="bench-watch")
        async with session:
            session.watches.log = None
            for n in range(4):
                session.watches.add(WatchSpec(QUESTIONS[n], threshold=0.0))
            server = MqttQueryServer(session, cfg, check_in_use=False)
            enable_watches(server, registration=False)
            task = asyncio.ensure_future(server.run())
            try:
                await asyncio.wait_for(server.wait_connected(), 20)
                async with aiomqtt.Client(cfg.host, cfg.port, protocol=aiomqtt.ProtocolVersion.V5 if v5
                                          else aiomqtt.ProtocolVersion.V311) as sub:
                    await sub.subscribe(f"{cfg.topic_prefix}/bench-watch/alerts", qos=1)

                    complete = asyncio.Event()

                    async def read() -> None:
                        async for message in sub.messages:
                            arrivals.append((time.time(), json.loads(message.payload)))
                            if len(arrivals) >= 4 * len(windows):
                                complete.set()

                    reader = asyncio.ensure_future(read())
                    start = time.time() - windows[0].t0_s
                    for i, window in enumerate(windows):
                        await asyncio.sleep(max(0.0, start + window.t1_s - time.time()))  # complete at its end
                        ended[i] = time.time()
                        await session.push_window(window)
                    await session.drain()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(complete.wait(), 10)
                    reader.cancel()
                    stats = session.stats()
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        latencies = [(t - ended[a["window"]]) * 1e3 for t, a in arrivals if a.get("window") in ended]
        return {"windows": len(windows), "alerts_expected": 4 * len(windows), "alerts_received": len(arrivals),
                "latency_ms_p50": _pct(latencies, 0.5), "latency_ms_p95": _pct(latencies, 0.95),
                "latency_ms_max": max(latencies) if latencies else None, "broker": url,
                "watch_deferred": stats.get("watch_deferred"), "video_dropped": stats.get("video_dropped")}

    if broker_url is not None:
        return await measure(broker_url, True)
    async with EmbeddedBroker() as broker:
        return await measure(broker.url, broker.supports_v5)


def next_count(tried: dict[int, bool], lo_n: int, hi_n: int) -> int | None:
    """The next stream count of the sustained search (see the module docstring); None when it is over.

    Args:
        tried: count -> sustained, for the counts run so far (the last one inserted last).
        lo_n: smallest count allowed.
        hi_n: largest count allowed.
    """
    passed = [n for n, ok in tried.items() if ok]
    failed = [n for n, ok in tried.items() if not ok]
    best = max(passed, default=None)
    worst = min((n for n in failed if best is None or n > best), default=None)
    last = list(tried)[-1]
    if worst is None:  # everything so far sustained: go up
        nxt = min(hi_n, max(last + 1, math.ceil(last * 1.25)))
    elif best is None:  # everything failed: go down
        nxt = max(lo_n, min(last - 1, math.floor(last * 0.75)))
    else:
        nxt = (best + worst) // 2
    return None if nxt in tried or not lo_n <= nxt <= hi_n else nxt


async def sustained_streams(adapter: Any, config: Any, windows: list[Any], *, estimate: int, watches: int,
                            sustain_range: tuple[int, int], trials: int, log_dir: str) -> dict[str, Any]:
    """Part 3: the largest number of live streams with ``watches`` questions each that stay sustained."""
    from omnizip_stream.bench.streams import StreamsSettings, realtime_phase
    from omnizip_stream.server.config import ServerSettings
    from omnizip_stream.watch.spec import WatchSpec

    settings = StreamsSettings(counts=(), stream=config, duration_s=len(windows) * config.window_s,
                               question_every_s=0.0, max_batch=ServerSettings().max_batch)
    specs = [WatchSpec(QUESTIONS[n % len(QUESTIONS)], threshold=SUSTAIN_THRESHOLD) for n in range(watches)]
    lo_n, hi_n = sustain_range
    tried: dict[int, bool] = {}
    rows = []
    n: int | None = min(hi_n, max(lo_n, estimate))
    while n is not None and len(tried) < trials:
        logger.info("sustained streams: %d stream(s) x %d watches, %d live windows", n, watches, len(windows))
        row = await realtime_phase(adapter, settings, n, [windows], watches=specs, alerts_dir=log_dir)
        tried[n] = bool(row["sustained"])
        rows.append({k: row[k] for k in SUSTAIN_FIELDS})
        n = next_count(tried, lo_n, hi_n)
    best = max((m for m, ok in tried.items() if ok), default=0)
    return {
        "measured": best, "estimate": estimate,
        "bracketed": best + 1 in tried, "capped": best == hi_n,
        "first_failed": min((m for m, ok in tried.items() if not ok and m > best), default=None),
        "watches_per_stream": watches, "threshold": SUSTAIN_THRESHOLD, "live_windows": len(windows),
        "warmup_windows": settings.warmup_windows, "max_batch": settings.max_batch,
        "range": [lo_n, hi_n], "counts": rows,
    }


SUSTAIN_FIELDS = ("streams", "sustained", "streams_sustained", "realtime", "streams_realtime", "video_dropped",
                  "windows_ingested", "watch_evaluations", "watch_evaluations_expected", "watch_deferred",
                  "watch_failed", "watch_alerts", "window_latency_ms", "window_lag_ms_by_window",
                  "lag_trend_ms_per_window", "timed_out")


def run_watch_bench(adapter: Any, config: Any, counts: list[int], *, source: str, windows: int, live_windows: int,
                    warmup: int, max_side: int, broker_url: str | None, out: Path, sustain_windows: int = 6,
                    sustain_range: tuple[int, int] = (1, 64), sustain_trials: int = 5) -> dict[str, Any]:
    """Run the three parts; write ``watches.json`` and ``watches.md`` into ``out``; return the report.

    ``sustain_windows`` live windows per stream count of part 3 (0: part 3 is not run), counts within
    ``sustain_range`` (inclusive), at most ``sustain_trials`` counts.
    """
    config = config.for_model(adapter.spec)  # window_s None: the model's exact window
    fps = adapter.spec.fps
    clip = asyncio.run(_windows(source, max(windows, live_windows, sustain_windows), config.window_s, fps, max_side))
    with tempfile.TemporaryDirectory() as log_dir:
        costs = window_costs(adapter, config, clip[:windows], counts, warmup=warmup, log_dir=log_dir)
        four = costs.get("4")
        if four is None and sustain_windows > 0:  # the search starts from the 4-question cost
            four = window_costs(adapter, config, clip[:windows], [4], warmup=warmup, log_dir=log_dir)["4"]
    latency = asyncio.run(alert_latency(adapter, config, clip[:live_windows], broker_url=broker_url))
    estimate = math.floor(config.window_s * 1e3 / four["window_ms_mean"]) if four else None
    search = None
    if sustain_windows > 0:
        with tempfile.TemporaryDirectory() as log_dir:
            search = asyncio.run(sustained_streams(adapter, config, clip[:sustain_windows], estimate=estimate or 1, watches=4,
                                                   sustain_range=sustain_range, trials=sustain_trials, log_dir=log_dir))
    window_ms = config.window_s * 1e3
    report = {
        "benchmark": "omnizip bench --watches", "model": config.model, "device": str(adapter.device),
        "window_s": config.window_s, "costs": costs, "alert_latency": latency,
        "streams_sustained_with_4": None if search is None else search["measured"],
        "streams_sustained_with_4_estimate": estimate,
        "sustained_search": search,
        "targets": {
            "4 watches add <= 30% to a window": None if four is None else four["overhead_pct"] <= 30.0,
            "alert latency p95 <= one window": None if latency["latency_ms_p95"] is None
            else latency["latency_ms_p95"] <= window_ms,
        },
        "notes": ["streams_sustained_with_4: measured with live-paced streams on one ModelWorker (part 3): the largest "
                  "count whose every stream stayed in real time with its 4 questions evaluated after every window; "
                  "sustained_search.bracketed says whether the next count up was run and failed",
                  "a short run can pass a count slightly over capacity (the lag grows but stays under one window "
                  "until the run ends): lag_trend_ms_per_window > 0 at the measured count hints at that; "
                  "--watch-sustain-windows 30 gives a tighter number",
                  "streams_sustained_with_4_estimate = floor(window_s / mean per-window cost with 4 watches) from "
                  "part 1, one stream at a time: where the search starts",
                  "watch cost includes appending alerts to the JSONL log (thresholds 1.0 in part 1: none fire)"],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "watches.json").write_text(json.dumps(report, indent=2))
    lines = ["# omnizip bench --watches", "", f"model {config.model} on {adapter.device}, window {config.window_s:g} s",
             "", "| watches | ingest ms | watch ms | overhead % | real-time factor |", "|---|---|---|---|---|"]
    for row in costs.values():
        lines.append(f"| {row['watches']} | {row['ingest_ms_mean']:.1f} | {row['watch_ms_mean']:.1f} | "
                     f"{row['overhead_pct']:.1f} | {row['real_time_factor']:.3f} |")
    p50, p95 = latency["latency_ms_p50"], latency["latency_ms_p95"]
    shown = "n/a" if p50 is None or p95 is None else f"p50 {p50:.0f} ms, p95 {p95:.0f} ms"
    lines += ["", f"alert latency (end of window -> broker): {shown} "
              f"({latency['alerts_received']}/{latency['alerts_expected']} alerts)",
              f"streams sustained in real time with 4 watches each: {_sustained_line(search)} "
              f"(estimate from the per-window cost: {estimate})"]
    if search is not None:
        lines += ["", "| streams | sustained | video dropped | watch evaluations | deferred | window p95 ms | "
                      "lag trend ms/window |", "|---|---|---|---|---|---|---|"]
        for row in sorted(search["counts"], key=lambda r: r["streams"]):
            p95, trend = row["window_latency_ms"].get("p95"), row["lag_trend_ms_per_window"]
            lines.append(f"| {row['streams']} | {row['streams_sustained']}/{row['streams']} | {row['video_dropped']} | "
                         f"{row['watch_evaluations']}/{row['watch_evaluations_expected']} | {row['watch_deferred']} | "
                         f"{'n/a' if p95 is None else f'{p95:.0f}'} | {'n/a' if trend is None else f'{trend:+.0f}'} |")
    (out / "watches.md").write_text("\n".join(lines) + "\n")
    return report


def _sustained_line(search: dict[str, Any] | None) -> str:
    if search is None:
        return "not measured (--watch-sustain-windows 0)"
    best = search["measured"]
    if search["capped"]:
        return f"{best} measured (the top of the search range: at least {best})"
    if search["bracketed"]:
        return f"{best} measured ({best + 1} failed)"
    if search["first_failed"] is not None:
        return f"{best} measured ({search['first_failed']} failed; the counts between were not run)"
    return f"{best} measured (the search ended before a larger count failed)"
