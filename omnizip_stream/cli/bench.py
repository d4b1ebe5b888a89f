"""``omnizip bench``: streaming latency, ours against full tokens and against re-prefilling the history.

Replays a synthetic or file stream faster than real time through the real pipeline, one mode after
another in one run: ``full``, ``omnizip-45/35``, ``random``/``uniform``/``dycoke`` at the same budgets
(streaming, rolling KV cache) and ``reprefill`` with and without OmniZip (no KV reuse). Writes
``results.json``, ``results.md`` and PNG plots into ``--out DIR``. ``scripts/bench_stream.py`` runs
the same code.

``--streams 1,2,4,8,16,32`` runs the capacity benchmark instead (:mod:`omnizip_stream.bench.streams`):
how many live streams one model serves in real time, window latency and question TTFT under load,
memory per stream, batched against one-at-a-time throughput; JSON, a table on stdout and a PNG.

``--quick`` (under two minutes with the tiny model on a 2-core CPU): stream lengths 30 s and 90 s
instead of 1, 5, 10 and 30 min; cache cap 4096 tokens so that it is reached within the run; three
timed queries per checkpoint (5 otherwise); all modes.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
from pathlib import Path

from omnizip_stream.cli import UserError
from omnizip_stream.cli._common import add_config_arguments, add_model_arguments, resolve_config

HELP = "benchmark streaming latency: OmniZip vs full tokens, baselines and re-prefilling the history"
EXAMPLE = "omnizip bench --out runs/bench --quick"

FULL_MINUTES = (1.0, 5.0, 10.0, 30.0)
QUICK_SECONDS = (30.0, 90.0)
QUICK_CACHE_TOKENS = 4096
WINDOW_S = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``omnizip bench``."""
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="directory for results.json, results.md and the PNG plots")
    parser.add_argument("--quick", action="store_true",
                        help="under 2 min on a 2-core CPU: streams of 30 s and 90 s, cache cap 4096 tokens, "
                             "3 timed queries, all modes")
    add_model_arguments(parser)
    add_config_arguments(parser)
    parser.add_argument("--source", default="synthetic",
                        help="synthetic[:opts] or file:PATH (a file is looped to reach the longest length)")
    parser.add_argument("--stream-minutes", default=None, metavar="LIST",
                        help="stream lengths at which queries are timed, rounded up to whole 2-s windows "
                             "(default 1,5,10,30; quick 0.5,1.5)")
    parser.add_argument("--modes", default="all",
                        help="comma-separated modes or 'all': full, omnizip-45, omnizip-35, random-45, random-35, "
                             "uniform-45, uniform-35, dycoke-45, dycoke-35, reprefill, reprefill+omnizip-45, "
                             "reprefill+omnizip-35")
    parser.add_argument("--cache-max-tokens", type=int, default=None,
                        help="rolling cache cap in tokens (default: the engine's 16384; quick 4096)")
    parser.add_argument("--cache-max-mb", type=float, default=None, help="rolling cache cap in MiB (default 2048)")
    parser.add_argument("--reprefill-budget-tokens", type=int, default=None,
                        help="tokens of history a reprefill query may re-prefill (default: the cache cap, so both "
                             "approaches can hold the same history)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length of a timed query")
    parser.add_argument("--query-repeats", type=int, default=None,
                        help="timed queries per checkpoint, after one warm-up (default 5; quick 3)")
    parser.add_argument("--warmup-windows", type=int, default=2, help="windows left out of latency statistics")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core box two threads were 8x slower)")
    parser.add_argument("--max-side", type=int, default=640, help="scale frames at decode to this longer side")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random models and baselines")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    group = parser.add_argument_group("live streams on one model (--streams: the capacity benchmark instead)")
    group.add_argument("--streams", default=None, metavar="LIST",
                       help="stream counts, e.g. 1,2,4,8,16,32: streams in real time, window latency, TTFT under "
                            "load, memory per stream, batched vs one-at-a-time throughput")
    group.add_argument("--duration-s", type=float, default=20.0, help="real-time seconds per stream count (default 20)")
    group.add_argument("--question-every-s", type=float, default=6.0,
                       help="seconds between two questions of one stream (default 6)")
    group.add_argument("--throughput-windows", type=int, default=4,
                       help="windows per stream in the throughput phase (default 4; at least 16 in all)")
    group.add_argument("--max-batch", type=int, default=8, help="batch size of the batched run (default 8)")
    group.add_argument("--throughput-repeats", type=int, default=3,
                       help="alternating one-at-a-time / batched throughput pairs per count; medians (default 3)")
    group.add_argument("--json", type=Path, default=None, metavar="PATH",
                       help="where the JSON goes (default OUT/streams.json; the plot is OUT/streams.png)")
    group = parser.add_argument_group("standing questions (--watches: the alert benchmark instead)")
    group.add_argument("--watches", default=None, metavar="LIST",
                       help="instead: the standing-question benchmark with these counts per stream (e.g. 0,1,4,16): "
                             "per-window cost, alert latency on a broker, streams sustained (omnizip_stream/bench/watches.py)")
    group.add_argument("--watch-windows", type=int, default=12, help="--watches: windows per count (default 12)")
    group.add_argument("--watch-live-windows", type=int, default=8,
                       help="--watches: live-paced windows for the alert latency (default 8)")
    group.add_argument("--broker", default=None, help="--watches: broker URL for the alert latency (default: embedded)")
    group.add_argument("--watch-sustain-windows", type=int, default=6, metavar="N",
                       help="--watches: live windows per stream count when measuring the streams sustained with 4 "
                            "questions each (default 6, the first one warm-up; 0: skip that measurement)")
    group.add_argument("--watch-sustain-range", default="1:64", metavar="LO:HI",
                       help="--watches: stream counts the sustained search may try (default 1:64; it starts at the "
                            "estimate from the per-window cost)")
    group.add_argument("--watch-sustain-trials", type=int, default=5, metavar="N",
                       help="--watches: most stream counts the sustained search runs (default 5)")


def _lengths(args: argparse.Namespace) -> tuple[float, ...]:
    if args.stream_minutes is None:
        return QUICK_SECONDS if args.quick else tuple(60.0 * m for m in FULL_MINUTES)
    try:
        minutes = [float(x) for x in args.stream_minutes.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--stream-minutes must be numbers separated by commas, got {args.stream_minutes!r}") from None
    if not minutes or any(not m > 0 for m in minutes):
        raise UserError("--stream-minutes needs positive numbers, e.g. 1,5,10,30")
    # a query is asked after the window that ends at the checkpoint: round up to whole 2-s windows
    seconds = sorted({math.ceil(round(m * 60.0 / WINDOW_S, 6)) * WINDOW_S for m in minutes})
    if seconds[0] < 4.0:
        raise UserError("the shortest stream length must be at least 4 s (two 2-s windows)")
    return tuple(seconds)


def resolve(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Validate the flags; return ``(modes, RunSettings)`` or raise :class:`UserError`."""
    from omnizip_stream.bench.modes import parse_modes
    from omnizip_stream.bench.runner import RunSettings
    from omnizip_stream.config import StreamConfig
    from omnizip_stream.sources import SourceError, parse_spec

    for name in ("max_new_tokens", "threads", "max_side"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup_windows < 0:
        raise UserError("--warmup-windows must be >= 0")
    if args.query_repeats is not None and args.query_repeats < 1:
        raise UserError("--query-repeats must be at least 1")
    try:
        modes = parse_modes(args.modes)
        spec = parse_spec(args.source)
    except (ValueError, SourceError) as exc:
        raise UserError(str(exc)) from None
    if spec.kind not in ("synthetic", "file"):
        raise UserError("--source must be synthetic[:opts] or file:PATH (a replayable stream)")
    if spec.kind == "file" and not Path(spec.target or "").is_file():
        raise UserError(f"--source file {spec.target!r} does not exist")
    lengths = _lengths(args)
    cache_tokens = args.cache_max_tokens or (QUICK_CACHE_TOKENS if args.quick else StreamConfig.cache_max_tokens)
    try:  # model, device, ... from --config, key=value and the model flags; the bench's own flags win
        base = resolve_config(args)
        stream = base.replace(seed=args.seed, torch_threads=args.threads, cache_max_tokens=cache_tokens,
                              cache_max_mb=args.cache_max_mb or base.cache_max_mb)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    budget = args.reprefill_budget_tokens or cache_tokens
    if budget <= stream.query_reserve_tokens + 64:
        raise UserError(f"--reprefill-budget-tokens must exceed the query reserve ({stream.query_reserve_tokens})")
    repeats = args.query_repeats or (3 if args.quick else 5)
    settings = RunSettings(source=args.source, checkpoints_s=lengths, stream=stream,
                           max_new_tokens=args.max_new_tokens, query_repeats=repeats,
                           reprefill_budget_tokens=budget, max_side=args.max_side)
    return modes, settings


def notes_for(settings, quick: bool) -> list[str]:  # type: ignore[no-untyped-def]
    """Plain-language notes written into the results (how to read this run)."""
    notes = [
        "windows are pushed one at a time as soon as the previous one is ingested (no pacing, no video shedding); "
        "timings are the engine's own counters",
        f"reprefill ring buffer: the most recent windows whose prefilled tokens fit {settings.reprefill_budget_tokens} "
        "tokens (minus the query reserve), the same token budget as the rolling cache; each query re-encodes and "
        "re-prefills it as one clip (offline path; OmniZip offline with global saliency)",
        "the rolling cache re-anchors positions by re-prefilling the retained windows (the engine's default "
        "'reprefill' policy) when temporal ids reach half the model's range; those windows show as p99 outliers",
    ]
    if quick:
        notes.append(f"--quick: stream lengths {', '.join(f'{s:g} s' for s in settings.checkpoints_s)} instead of "
                     "1/5/10/30 min, cache cap 4096 tokens, 3 timed queries; ratios use the lengths available")
    return notes


def resolve_streams(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Validate the ``--streams`` flags; return :class:`~omnizip_stream.bench.streams.StreamsSettings`.

    Frames go in at their native size (``video_max_pixels`` = the synthetic frame's pixels) unless the
    config sets a pixel budget.
    """
    from omnizip_stream.bench.streams import StreamsSettings

    width, height = StreamsSettings.frame_size

    try:
        counts = sorted({int(x) for x in args.streams.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--streams must be whole numbers separated by commas, got {args.streams!r}") from None
    if not counts or counts[0] < 1:
        raise UserError("--streams needs stream counts >= 1, e.g. 1,2,4,8,16,32")
    for name in ("duration_s", "question_every_s"):
        if not getattr(args, name) > 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    for name in ("throughput_windows", "throughput_repeats", "max_batch", "max_new_tokens", "threads"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    try:
        base = resolve_config(args)
        stream = base.replace(seed=args.seed, torch_threads=args.threads,
                              video_max_pixels=base.video_max_pixels or width * height,
                              **({"cache_max_tokens": args.cache_max_tokens} if args.cache_max_tokens else {}),
                              **({"cache_max_mb": args.cache_max_mb} if args.cache_max_mb else {}))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return StreamsSettings(counts=tuple(counts), stream=stream, duration_s=args.duration_s,
                           question_every_s=args.question_every_s, max_new_tokens=args.max_new_tokens,
                           throughput_windows=args.throughput_windows, max_batch=args.max_batch,
                           throughput_repeats=args.throughput_repeats)


def run_streams(args: argparse.Namespace) -> int:
    """``omnizip bench --streams``: the capacity benchmark; table on stdout, JSON and PNG written."""
    from omnizip.adapters.base import ModelLoadError
    from omnizip_stream.bench.env import set_threads
    from omnizip_stream.bench.models import load_bench_adapter
    from omnizip_stream.bench.streams import run_streams_benchmark
    from omnizip_stream.bench.streams_report import streams_table, write_streams_outputs
    from omnizip_stream.kv import CacheFullError

    settings = resolve_streams(args)
    set_threads(args.threads)
    # One warning per shed window and stream would bury the table; every drop is counted in the JSON.
    logging.getLogger("omnizip_stream.server.scheduler").setLevel(logging.ERROR)
    cfg = settings.stream
    try:
        adapter = load_bench_adapter(cfg.model, device=cfg.device, dtype=cfg.dtype, attn=cfg.attn, seed=args.seed,
                                     video_max_pixels=cfg.video_max_pixels)
    except ModelLoadError as exc:
        raise UserError(str(exc)) from None
    try:
        report = run_streams_benchmark(adapter, cfg.model, settings,
                                       progress=lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True))
    except CacheFullError as exc:
        raise UserError(f"{exc}; raise --cache-max-tokens") from None
    report["command"] = " ".join(shlex.quote(a) for a in sys.argv)
    json_path = args.json or args.out / "streams.json"
    paths = write_streams_outputs(report, json_path, None if args.no_plots else args.out / "streams.png")
    print(streams_table(report))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; exit 0, or raise UserError (exit 2) for bad input."""
    if args.streams is not None:
        return run_streams(args)
    from omnizip.adapters.base import ModelLoadError
    from omnizip_stream.bench.env import set_threads
    from omnizip_stream.bench.models import load_bench_adapter
    from omnizip_stream.bench.stream import run_benchmark, stream_targets, write_outputs
    from omnizip_stream.kv import CacheFullError

    if args.watches is not None:
        return _run_watches(args)
    modes, settings = resolve(args)
    set_threads(args.threads)
    cfg = settings.stream
    try:
        adapter = load_bench_adapter(cfg.model, device=cfg.device, dtype=cfg.dtype, attn=cfg.attn, seed=args.seed)
    except ModelLoadError as exc:
        raise UserError(str(exc)) from None
    try:
        report, records = run_benchmark(adapter, cfg.model, modes, settings, warmup_windows=args.warmup_windows)
    except CacheFullError as exc:
        raise UserError(f"{exc}; raise --cache-max-tokens") from None
    report = {"benchmark": "omnizip bench: streaming latency", "quick": bool(args.quick),
              "command": " ".join(shlex.quote(a) for a in sys.argv), **report}
    report["targets"] = stream_targets(report, records, args.warmup_windows)
    report["notes"] = notes_for(settings, args.quick)
    paths = write_outputs(report, args.out, plots=not args.no_plots)
    for name, t in report["targets"].items():
        verdict = {True: "pass", False: "FAIL", None: "n/a"}[t["pass"]]
        print(f"{name}: {verdict}{' - ' + t['note'] if t['note'] else ''}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _run_watches(args: argparse.Namespace) -> int:
    """``--watches LIST``: the standing-question benchmark (:mod:`omnizip_stream.bench.watches`)."""
    from omnizip.adapters.base import ModelLoadError
    from omnizip_stream.bench.env import set_threads
    from omnizip_stream.bench.models import load_bench_adapter
    from omnizip_stream.bench.watches import run_watch_bench

    try:
        counts = sorted({int(x) for x in args.watches.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--watches must be whole numbers separated by commas, got {args.watches!r}") from None
    if not counts or any(not 0 <= k <= 64 for k in counts):
        raise UserError("--watches needs counts in [0, 64], e.g. 0,1,4,16")
    if args.watch_windows < args.warmup_windows + 2 or args.watch_live_windows < 2:
        raise UserError("--watch-windows must exceed --warmup-windows by 2; --watch-live-windows must be >= 2")
    if args.watch_sustain_windows == 1 or args.watch_sustain_windows < 0 or args.watch_sustain_trials < 1:
        raise UserError("--watch-sustain-windows must be 0 (skip) or >= 2; --watch-sustain-trials must be >= 1")
    lo, _, hi = args.watch_sustain_range.partition(":")
    try:
        sustain_range = (int(lo), int(hi))
    except ValueError:
        raise UserError(f"--watch-sustain-range must be LO:HI, e.g. 1:64, got {args.watch_sustain_range!r}") from None
    if not 1 <= sustain_range[0] <= sustain_range[1] <= 1024:
        raise UserError(f"--watch-sustain-range needs 1 <= LO <= HI <= 1024, got {args.watch_sustain_range!r}")
    try:
        cfg = resolve_config(args).replace(seed=args.seed, torch_threads=args.threads)
        # room for a standing question and its answer instruction (byte-level tiny tokenizers need it)
        cfg = cfg.replace(max_question_tokens=max(cfg.max_question_tokens, 96))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    set_threads(args.threads)
    try:
        adapter = load_bench_adapter(cfg.model, device=cfg.device, dtype=cfg.dtype, attn=cfg.attn, seed=args.seed)
    except ModelLoadError as exc:
        raise UserError(str(exc)) from None
    report = run_watch_bench(adapter, cfg, counts, source=args.source, windows=args.watch_windows,
                             live_windows=args.watch_live_windows, warmup=args.warmup_windows,
                             max_side=args.max_side, broker_url=args.broker, out=args.out,
                             sustain_windows=args.watch_sustain_windows, sustain_range=sustain_range,
                             sustain_trials=args.watch_sustain_trials)
    for name, ok in report["targets"].items():
        print(f"{name}: {({True: 'pass', False: 'FAIL', None: 'n/a'})[ok]}")
    print((args.out / "watches.md").read_text(), end="")
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Standalone entry point (``scripts/bench_stream.py``): same flags, exit 2 on bad input."""
    from omnizip_stream.cli._common import HelpFormatter, Parser

    parser = Parser(prog=prog, description=HELP, formatter_class=HelpFormatter, epilog=f"example:\n  {EXAMPLE}")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except UserError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
