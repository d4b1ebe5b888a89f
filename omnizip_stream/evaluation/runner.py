"""The sweep loop: every item x every setting on one path, results appended as they finish.

Items are the outer loop, so an item's media is decoded once for all its settings (offline path) and
the model, loaded once by the caller, is reused throughout. Keys already in the store are skipped. A
missing or corrupt media file becomes an ``error`` record for each pending setting of that item and
the sweep goes on; so does any other failure of one item (logged with its traceback), so a long run is
never lost to one bad clip.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from omnizip_stream.evaluation.answerers import ItemFailure, MediaFailure, Outcome
from omnizip_stream.evaluation.items import EvalItem
from omnizip_stream.evaluation.progress import Progress
from omnizip_stream.evaluation.prompting import build_prompt, parse_answer
from omnizip_stream.evaluation.settings import EvalSetting
from omnizip_stream.evaluation.store import Key, ResultStore

logger = logging.getLogger(__name__)


class Answerer(Protocol):
    """What the runner needs from the offline / streaming answerers."""

    path: str

    def prepare(self, item: EvalItem) -> Any:
        """Per-item media (raises :class:`MediaFailure`)."""
        ...

    def answer(self, item: EvalItem, media: Any, setting: EvalSetting, prompt: str) -> Outcome:
        """One reply (raises :class:`MediaFailure` / :class:`ItemFailure`)."""
        ...


@dataclass
class RunStats:
    """What one call of :func:`run_eval` did.

    Attributes:
        total: units (item x setting) in the sweep.
        skipped: units finished by an earlier run.
        answered: units answered now.
        errors: units recorded as errors now.
    """

    total: int = 0
    skipped: int = 0
    answered: int = 0
    errors: int = 0


def _key(item: EvalItem, setting: EvalSetting, path: str) -> Key:
    return (item.benchmark, item.item_id, setting.method, setting.retention, path)


def _base_record(item: EvalItem, setting: EvalSetting, path: str, model: str) -> dict[str, Any]:
    return {
        "benchmark": item.benchmark, "item_id": item.item_id, "task": item.task, "method": setting.method,
        "retention": setting.retention, "path": path, "rho_audio": setting.rho_audio, "rho_video": setting.rho_video,
        "model": model, "video": item.video, "answer": item.answer, "n_options": len(item.options),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def outcome_record(item: EvalItem, setting: EvalSetting, path: str, model: str, outcome: Outcome) -> dict[str, Any]:
    """The result record of an answered unit: parsed letter, correctness, measured retention, timings."""
    pred = parse_answer(outcome.response, item.options)
    total = outcome.audio_tokens_total + outcome.video_tokens_total
    kept = outcome.audio_tokens_kept + outcome.video_tokens_kept
    record = _base_record(item, setting, path, model)
    record.update({
        "status": "ok", "error": None, "error_kind": None, "response": outcome.response, "pred": pred,
        "correct": pred == item.answer, "audio_tokens_total": outcome.audio_tokens_total,
        "audio_tokens_kept": outcome.audio_tokens_kept, "video_tokens_total": outcome.video_tokens_total,
        "video_tokens_kept": outcome.video_tokens_kept, "retention_measured": kept / total if total else None,
        "prefill_ms": outcome.prefill_ms, **{f"x_{k}": v for k, v in outcome.extra.items()},
    })
    return record


def error_record(item: EvalItem, setting: EvalSetting, path: str, model: str, kind: str, message: str) -> dict[str, Any]:
    """The result record of a unit that could not be answered (counted as wrong, like the reference scripts)."""
    record = _base_record(item, setting, path, model)
    record.update({"status": "error", "error_kind": kind, "error": message.splitlines()[0] if message else kind,
                   "response": None, "pred": None, "correct": False})
    return record


def run_eval(
    items: Sequence[EvalItem],
    settings: Sequence[EvalSetting],
    answerer: Answerer,
    store: ResultStore,
    *,
    model: str,
    progress: Progress | None = None,
    retry_errors: bool = False,
    warmup: bool = False,
) -> RunStats:
    """Run every pending (item, setting) on ``answerer.path`` and append the results to ``store``.

    Args:
        items: the benchmark items (ids unique).
        settings: the sweep's settings.
        answerer: :class:`~omnizip_stream.evaluation.answerers.OfflineAnswerer` or ``StreamingAnswerer``.
        store: the output store (read for resume, appended to).
        model: model name recorded in each result.
        progress: progress printer (None: silent).
        retry_errors: run again the keys whose stored record is an error.
        warmup: answer the first pending unit once and discard it before the sweep, so one-off costs
            (kernel selection, allocator growth) stay out of the first item's prefill time.

    Returns:
        The counts of this call.
    """
    path = answerer.path
    existing = store.load()
    stats = RunStats(total=len(items) * len(settings))

    def finished(key: Key) -> bool:
        rec = existing.get(key)
        return rec is not None and not (retry_errors and rec.get("status") == "error")

    for item in items:
        pending = [s for s in settings if not finished(_key(item, s, path))]
        done = len(settings) - len(pending)
        stats.skipped += done
        if progress is not None and done:
            progress.skip(done)
        if not pending:
            continue
        prompt = build_prompt(item)
        t0 = time.perf_counter()
        try:
            media = answerer.prepare(item)
        except MediaFailure as exc:
            logger.warning("%s: media error: %s", item.item_id, exc)
            _fail_all(item, pending, path, model, "media", str(exc), store, stats, progress)
            continue
        logger.debug("%s: media ready in %.0f ms", item.item_id, (time.perf_counter() - t0) * 1e3)
        if warmup:
            warmup = False
            try:
                answerer.answer(item, media, pending[0], prompt)
                logger.info("warm-up answer done (discarded)")
            except Exception as exc:  # the real attempt below records what goes wrong
                logger.info("warm-up failed (%s); continuing", exc)
        for i, setting in enumerate(pending):
            try:
                outcome = answerer.answer(item, media, setting, prompt)
            except MediaFailure as exc:
                logger.warning("%s: media error: %s", item.item_id, exc)
                _fail_all(item, pending[i:], path, model, "media", str(exc), store, stats, progress)
                break
            except ItemFailure as exc:
                logger.warning("%s [%s]: %s", item.item_id, setting.label, exc)
                _fail(item, setting, path, model, exc.kind, str(exc), store, stats, progress)
                continue
            except Exception as exc:  # one bad item must not end a long sweep; the log has the traceback
                logger.exception("%s [%s] failed", item.item_id, setting.label)
                _fail(item, setting, path, model, "internal", f"{type(exc).__name__}: {exc}", store, stats, progress)
                continue
            store.append(outcome_record(item, setting, path, model, outcome))
            stats.answered += 1
            if progress is not None:
                progress.advance(f"{setting.label} {item.item_id}")
    if progress is not None:
        progress.close()
    return stats


def _fail(item: EvalItem, setting: EvalSetting, path: str, model: str, kind: str, message: str,
          store: ResultStore, stats: RunStats, progress: Progress | None) -> None:
    store.append(error_record(item, setting, path, model, kind, message))
    stats.errors += 1
    if progress is not None:
        progress.advance(f"{setting.label} {item.item_id} ERROR", error=True)


def _fail_all(item: EvalItem, settings: Sequence[EvalSetting], path: str, model: str, kind: str, message: str,
              store: ResultStore, stats: RunStats, progress: Progress | None) -> None:
    for setting in settings:
        _fail(item, setting, path, model, kind, message, store, stats, progress)
