"""Accuracy evaluation of compression methods on audio-visual multiple-choice benchmarks.

The pieces, one module each: :mod:`~omnizip_stream.evaluation.loaders` (WorldSense, AVUT, VideoMME,
ShortVid-Bench and a generic JSONL format into :class:`EvalItem`), :mod:`.prompting` (the paper's
multiple-choice prompt and answer-letter parsing), :mod:`.settings` (methods x retention settings),
:mod:`.answerers` (offline ``answer_clip`` or the live streaming session), :mod:`.runner` (the
resumable sweep), :mod:`.store` (JSONL results), :mod:`.report` (Table-1-shaped Markdown and JSON).
``omnizip eval`` (``omnizip_stream.cli.eval``) wires them together.
"""

from __future__ import annotations

from omnizip_stream.evaluation.answerers import (
    AnswerOptions,
    ItemFailure,
    MediaFailure,
    OfflineAnswerer,
    Outcome,
    StreamingAnswerer,
)
from omnizip_stream.evaluation.items import LETTERS, AnnotationError, EvalItem
from omnizip_stream.evaluation.loaders import BENCHMARKS, load_benchmark, load_jsonl
from omnizip_stream.evaluation.progress import Progress
from omnizip_stream.evaluation.prompting import build_prompt, eval_system_prompt, parse_answer
from omnizip_stream.evaluation.report import markdown, normalised_average, summarise, write_reports
from omnizip_stream.evaluation.runner import RunStats, run_eval
from omnizip_stream.evaluation.settings import RETENTION_PRESETS, EvalSetting, build_settings, default_g
from omnizip_stream.evaluation.store import ResultStore, StoreError

__all__ = [
    "BENCHMARKS",
    "LETTERS",
    "RETENTION_PRESETS",
    "AnnotationError",
    "AnswerOptions",
    "EvalItem",
    "EvalSetting",
    "ItemFailure",
    "MediaFailure",
    "OfflineAnswerer",
    "Outcome",
    "Progress",
    "ResultStore",
    "RunStats",
    "StoreError",
    "StreamingAnswerer",
    "build_prompt",
    "build_settings",
    "default_g",
    "eval_system_prompt",
    "load_benchmark",
    "load_jsonl",
    "markdown",
    "normalised_average",
    "parse_answer",
    "run_eval",
    "summarise",
    "write_reports",
]
