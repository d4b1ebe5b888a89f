r"""``omnizip eval``: accuracy of compression methods on a benchmark, offline or through the streaming path.

Example (the paper's Table 1 on one benchmark; repeat with other benchmarks into the same --out to fill
the other columns)::

    omnizip eval --model Qwen/Qwen2.5-Omni-7B --device cuda --attn flash_attention_2 \\
        --benchmark avut --data-root data/AVUT --methods full,omnizip,random,uniform,dycoke \\
        --retention 0.45,0.35 --path offline --out runs/table1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from omnizip_stream.cli import UserError
from omnizip_stream.cli._common import add_config_arguments, add_model_arguments, resolve_config, tiny_notice

if TYPE_CHECKING:
    from omnizip_stream.evaluation import EvalItem, EvalSetting, ResultStore, RunStats

HELP = "accuracy of compression methods on WorldSense / AVUT / VideoMME / ShortVid-Bench / JSONL (resumable)"
EXAMPLE = ("omnizip eval --model Qwen/Qwen2.5-Omni-7B --device cuda --benchmark avut --data-root data/AVUT "
           "--out runs/table1")
logger = logging.getLogger(__name__)

# Settings that change answers: results made with different values cannot share an --out folder.
# (The streaming window is the model's exact window, so "model" covers it.)
_COMPARED = ("model", "max_new_tokens", "max_frames", "max_side", "video_max_pixels", "saliency", "anchor_ratio",
             "cache_max_tokens", "dtype")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``omnizip eval``."""
    parser.add_argument("--benchmark", default=None,
                        help="worldsense | avut | videomme | shortvid | jsonl:FILE (layouts: see the README)")
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="dataset folder (required for the published benchmarks; for jsonl: base of video paths)")
    parser.add_argument("--annotation", default=None, metavar="FILE",
                        help="use this annotation file instead of the benchmark's default one")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="results folder: results.jsonl (resumable), config.json, summary.json, report.md")
    add_model_arguments(parser)
    add_config_arguments(parser)
    group = parser.add_argument_group("sweep")
    group.add_argument("--methods", default="full,omnizip,random,uniform,dycoke",
                       help="comma list; full = the uncompressed model, run once (default %(default)s)")
    group.add_argument("--retention", default="0.45,0.35",
                       help="comma list of settings: 0.45 (rho 0.3/0.6), 0.35 (0.4/0.7) or RHO_A/RHO_V (default %(default)s)")
    group.add_argument("--path", choices=("offline", "streaming"), default="offline",
                       help="offline (the paper's setup) or streaming (replay through the live session)")
    group.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N questions")
    group.add_argument("--retry-errors", action="store_true", help="run again the items recorded as errors")
    group.add_argument("--report-only", action="store_true",
                       help="rewrite summary.json and report.md from --out without running anything")
    group = parser.add_argument_group("generation and media")
    group.add_argument("--max-new-tokens", type=int, default=16, help="answer length (greedy; default %(default)s)")
    group.add_argument("--max-frames", type=int, default=768,
                       help="offline frame cap for long videos, 0 = none (default %(default)s, as qwen-omni-utils)")
    group.add_argument("--max-side", type=int, default=640,
                       help="scale frames at decode to this longer side before the model's resize, 0 = native")
    group.add_argument("--video-max-pixels", type=int, default=None,
                       help="pixel budget per frame (default 128*28*28, the paper's setting)")
    group.add_argument("--g", type=int, default=None,
                       help="audio tokens merged per anchor (default: 15 on avut, 3 elsewhere, as the paper)")
    group.add_argument("--anchor-ratio", type=float, default=0.05, help="anchors as a fraction of audio tokens")
    group.add_argument("--saliency", choices=("global", "block"), default="global",
                       help="offline audio saliency (the streaming path always uses block)")
    group.add_argument("--cache-max-tokens", type=int, default=16384,
                       help="streaming KV cache cap in tokens (older windows are evicted past it)")


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _check_numbers(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    if args.max_frames < 0 or args.max_side < 0:
        raise UserError("--max-frames and --max-side must be >= 0 (0 = no limit)")
    if 0 < args.max_side < 16:
        raise UserError("--max-side must be at least 16 pixels (or 0 for native size)")
    if args.g is not None and args.g < 0:
        raise UserError("--g must be >= 0")
    if not 0.0 <= args.anchor_ratio <= 1.0:
        raise UserError("--anchor-ratio must be in [0, 1]")
    if args.cache_max_tokens < 256:
        raise UserError("--cache-max-tokens must be at least 256")


def run(args: argparse.Namespace) -> int:
    """Load the benchmark and the model once, run the sweep, write the reports; exit 0 or UserError (2)."""
    from omnizip.registry import available
    from omnizip_stream.evaluation import (
        AnnotationError,
        ResultStore,
        StoreError,
        build_settings,
        default_g,
        load_benchmark,
        write_reports,
    )

    _check_numbers(args)
    cfg = resolve_config(args)  # the model flags, --config and key=value (methods and ratios come from the sweep)
    args.model, args.device, args.dtype, args.attn = cfg.model, cfg.device, cfg.dtype, cfg.attn
    args.video_max_pixels = cfg.video_max_pixels
    notice = tiny_notice(args.model)
    try:
        store = ResultStore(args.out)
    except (StoreError, OSError) as exc:
        raise UserError(str(exc)) from None
    if args.report_only:
        return _report(store, args)
    if not args.benchmark:
        raise UserError("--benchmark is required (worldsense, avut, videomme, shortvid or jsonl:FILE)")
    try:
        settings = build_settings(_split(args.methods), _split(args.retention), available())
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        items = load_benchmark(args.benchmark, args.data_root, args.annotation)
    except AnnotationError as exc:
        raise UserError(str(exc)) from None
    if args.limit is not None:
        items = items[: args.limit]
    benchmark = items[0].benchmark
    g = args.g if args.g is not None else default_g(benchmark)
    config = {
        "model": args.model, "max_new_tokens": args.max_new_tokens, "max_frames": args.max_frames or None,
        "max_side": args.max_side or None, "video_max_pixels": args.video_max_pixels, "saliency": args.saliency,
        "anchor_ratio": args.anchor_ratio, "window_s": "model", "cache_max_tokens": args.cache_max_tokens,
        "dtype": args.dtype, f"g_{benchmark}": g, "device": args.device, "attn": args.attn,
    }
    try:
        store.check_config(config, (*_COMPARED, f"g_{benchmark}"))
        store.load()  # a damaged results file is reported before the model is loaded
    except StoreError as exc:
        raise UserError(str(exc)) from None
    if notice:
        print(notice, file=sys.stderr)
    stats = _sweep(args, items, settings, store, g)
    print(f"{benchmark} ({args.path}): {stats.answered} answered, {stats.errors} errors, {stats.skipped} already done "
          f"of {stats.total}", file=sys.stderr)
    summary_path, report_path = write_reports(args.out, store.records(), model=args.model, notice=notice)
    with open(report_path, encoding="utf-8") as fh:
        sys.stdout.write(fh.read())
    print(f"wrote {os.path.join(args.out, 'results.jsonl')}, {summary_path}, {report_path}", file=sys.stderr)
    if notice:
        print("note: --model tiny has random weights: the accuracies above are meaningless; the harness "
              "(loading, prompting, compression, parsing, resume, reports) is real.", file=sys.stderr)
    return 0


def _sweep(args: argparse.Namespace, items: list[EvalItem], settings: list[EvalSetting], store: ResultStore,
           g: int) -> RunStats:
    from omnizip.adapters.base import ModelLoadError
    from omnizip.adapters.loading import load_adapter
    from omnizip_stream.evaluation import (
        AnswerOptions,
        OfflineAnswerer,
        Progress,
        StreamingAnswerer,
        eval_system_prompt,
        run_eval,
    )

    try:
        adapter = load_adapter(args.model, device=args.device, dtype=args.dtype, attn=args.attn,
                               video_max_pixels=args.video_max_pixels)
    except ModelLoadError as exc:
        raise UserError(str(exc)) from None
    options = AnswerOptions(
        max_new_tokens=args.max_new_tokens, system_prompt=eval_system_prompt(getattr(adapter, "system_prompt", None)),
        g=g, anchor_ratio=args.anchor_ratio, saliency=args.saliency, max_frames=args.max_frames or None,
        max_side=args.max_side or None, cache_max_tokens=args.cache_max_tokens, model_name=args.model,
    )
    answerer = (OfflineAnswerer if args.path == "offline" else StreamingAnswerer)(adapter, options)
    progress = Progress(len(items) * len(settings), label=f"eval {items[0].benchmark} {args.path}")
    return run_eval(items, settings, answerer, store, model=args.model, progress=progress,
                    retry_errors=args.retry_errors, warmup=True)


def _report(store: ResultStore, args: argparse.Namespace) -> int:
    from omnizip_stream.evaluation import StoreError, write_reports

    try:
        records = store.records()
    except StoreError as exc:
        raise UserError(str(exc)) from None
    if not records:
        raise UserError(f"--out {args.out} holds no results yet")
    model = str(records[0].get("model"))
    _, report_path = write_reports(args.out, records, model=model, notice=tiny_notice(model))
    with open(report_path, encoding="utf-8") as fh:
        sys.stdout.write(fh.read())
    return 0
