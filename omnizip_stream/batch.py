"""Several streams' windows and questions through one model call per stage.

A window goes through five phases (methods of :class:`~omnizip_stream.engine.StreamEngine`):

1. ``begin_window`` (per stream): cursor, audio and frames on the model's grid -> an
   :class:`~omnizip.adapters.batch_encode.EncodeRequest`;
2. ONE :func:`~omnizip.adapters.batch_encode.encode_av_many` for every window of the batch;
3. ``compress_window`` (per stream): plan, gather, evict, placement (re-anchoring inline, rare) -> the
   :class:`~omnizip.adapters.batch_forward.ForwardItem` that prefills it;
4. ONE :func:`~omnizip.adapters.batch_forward.forward_many`: each window into its own stream's cache;
5. ``commit_window`` (per stream): the segment recorded, the stream's counters, its report.

A question: ``begin_question`` (per stream: cache checkpoint, closing tokens + question) -> ONE
``forward_many`` -> ONE :func:`~omnizip.adapters.batch_decode.greedy_decode_many` -> every cache
restored -> ``finish_question``.

``StreamEngine.ingest`` and ``StreamEngine.answer`` are the batches of one. Failures stay per stream:
what one stream's phase raises fails that stream's item only; when a shared call raises, the caches
it touched are put back and it is run one stream at a time, so only the culprit fails.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from omnizip.adapters.base import EncodedAV
from omnizip.adapters.batch_decode import DecodeJob, greedy_decode_many
from omnizip.adapters.batch_encode import EncodeRequest, encode_av_many
from omnizip.adapters.batch_forward import ForwardItem, forward_many
from omnizip_stream.window import Window

if TYPE_CHECKING:
    from omnizip.preprocess import PreparedVideo
    from omnizip_stream.engine import QueryResult, StreamEngine, WindowReport
    from omnizip_stream.kv import Segment

logger = logging.getLogger(__name__)


class StageClock:
    """Stage boundaries of one window (or batch): CUDA events on a GPU, ``perf_counter`` on the CPU.

    On CUDA each :meth:`mark` records an event on the current stream (no device-wide
    ``synchronize``, so other streams' work is not serialised); :meth:`elapsed_ms` waits for the last
    event only and returns the GPU-timeline time between consecutive marks.

    Args:
        device: the model's device (``None`` or CPU: wall-clock marks).
    """

    def __init__(self, device: torch.device | None) -> None:
        self.cuda = device is not None and device.type == "cuda"
        self._marks: list[Any] = []

    def mark(self) -> None:
        """Record a stage boundary."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())

    def elapsed_ms(self) -> list[float]:
        """Milliseconds between consecutive marks (one host wait on the last event on CUDA)."""
        pairs = list(zip(self._marks[:-1], self._marks[1:], strict=True))
        if self.cuda:
            self._marks[-1].synchronize()
            return [float(a.elapsed_time(b)) for a, b in pairs]
        return [(b - a) * 1e3 for a, b in pairs]


def cuda_device(adapter: Any) -> torch.device | None:
    """The adapter's device when it is a GPU, else None."""
    device = getattr(adapter, "device", None)
    return device if isinstance(device, torch.device) and device.type == "cuda" else None


@dataclass
class WindowJob:
    """One window between its phases.

    Attributes:
        window: the media.
        request: what to encode (phase 1).
        encoded: the encoded window (phase 2).
        keep: the compressor's keep-mask over ``encoded.layout`` (phase 3).
        segment: the cache segment its forward prefills (phase 3).
        evicted: stream indices of the windows evicted to make room (phase 3).
    """

    window: Window
    request: EncodeRequest
    encoded: EncodedAV | None = None
    keep: Any = None
    segment: Segment | None = None
    evicted: list[int] = field(default_factory=list)


@dataclass
class Ask:
    """One question: ``on_text`` receives each piece of the answer (if it raises, this answer ends)."""

    question: str
    max_new_tokens: int
    submitted_at: float | None = None  # time.perf_counter() of the submission (TTFT counts from it)
    on_text: Callable[[str], None] | None = None


@dataclass
class QuestionJob:
    """One question between its phases.

    Attributes:
        ask: the question.
        submitted_at: ``time.perf_counter()`` its latency counts from.
        max_new_tokens: the answer budget (capped by the stream's config).
        checkpoint: the stream cache's length to restore afterwards.
        item: the prefill of the A/V closing tokens and the question (``logits=True``).
        next_position: position id of the first answer token.
        prompt_tokens: tokens ``item`` appends.
    """

    ask: Ask
    submitted_at: float
    max_new_tokens: int
    checkpoint: int
    item: ForwardItem
    next_position: float
    prompt_tokens: int


def ingest_windows(pairs: Sequence[tuple[StreamEngine, Window]],
                   prepared: Sequence[PreparedVideo | None] | None = None) -> list[WindowReport | Exception]:
    """Ingest one window of each engine (distinct engines sharing one adapter), one call per model stage.

    ``prepared[i]``: the frames of ``pairs[i]`` already resized and patchified, or None (made here).

    In a batch, a report's stage times (``encode_ms``, ``compress_ms``, ``prefill_ms``) are the
    batch's: every window of it waited for all of them; ``batch_windows`` says how many windows ran.

    Returns:
        ``result[i]``: the :class:`~omnizip_stream.engine.WindowReport` of ``pairs[i]``, or the
        exception its window raised (then nothing of that window was recorded).
    """
    engines = [engine for engine, _ in pairs]
    if len({id(e) for e in engines}) != len(engines):
        raise ValueError("a batch holds at most one window per stream")
    adapter = engines[0].adapter
    outcomes: list[Any] = [None] * len(pairs)
    device = cuda_device(adapter)
    if device is not None:
        # One batch at a time on the model thread: the peak until its end is this batch's.
        torch.cuda.reset_peak_memory_stats(device)
    clock = StageClock(device)
    clock.mark()
    ahead = list(prepared) if prepared is not None else [None] * len(pairs)
    jobs = _each(outcomes, range(len(pairs)), lambda i: engines[i].begin_window(pairs[i][1], ahead[i]))
    encoded = _together(outcomes, list(jobs), lambda ids: encode_av_many(adapter, [jobs[i].request for i in ids]))
    clock.mark()
    items = _each(outcomes, list(encoded), lambda i: engines[i].compress_window(jobs[i], encoded[i]))
    clock.mark()
    lengths = {i: engines[i].cache.checkpoint() for i in items}

    def put_back(ids: list[int]) -> None:
        for i in ids:
            engines[i].cache.restore(lengths[i])

    prefilled = _together(outcomes, list(items), lambda ids: forward_many(adapter, [items[i] for i in ids]),
                          put_back)
    clock.mark()
    encode_ms, compress_ms, prefill_ms = clock.elapsed_ms()
    stage_ms = {"encode_ms": encode_ms, "compress_ms": compress_ms, "prefill_ms": prefill_ms,
                "total_ms": encode_ms + compress_ms + prefill_ms, "batch_windows": float(len(pairs))}
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device is not None else None
    reports = _each(outcomes, list(prefilled), lambda i: engines[i].commit_window(jobs[i], stage_ms, peak_mb))
    for i, report in reports.items():
        outcomes[i] = report
    return outcomes


def answer_questions(pairs: Sequence[tuple[StreamEngine, Ask]]) -> list[QueryResult | Exception]:
    """Answer one question of each engine (distinct engines sharing one adapter) together.

    Every cache is restored afterwards. TTFT of each answer counts from its own ``submitted_at`` to
    the end of the shared question prefill (the first token is the argmax of its logits).

    Returns:
        ``result[i]``: the :class:`~omnizip_stream.engine.QueryResult` of ``pairs[i]``, or the
        exception it raised (``QueryError``, or whatever its ``on_text`` raised).
    """
    engines = [engine for engine, _ in pairs]
    if len({id(e) for e in engines}) != len(engines):
        raise ValueError("a batch holds at most one question per stream")
    adapter = engines[0].adapter
    outcomes: list[Any] = [None] * len(pairs)
    jobs = _each(outcomes, range(len(pairs)), lambda i: engines[i].begin_question(pairs[i][1]))
    generations: dict[int, Any] = {}

    def put_back(ids: list[int]) -> None:
        for i in ids:
            engines[i].cache.restore(jobs[i].checkpoint)

    try:
        logits = _together(outcomes, list(jobs), lambda ids: forward_many(adapter, [jobs[i].item for i in ids]),
                           put_back)
        device = cuda_device(adapter)
        if device is not None:
            torch.cuda.synchronize(device)  # TTFT is wall-clock latency
        t_prefill = time.perf_counter()
        relays = {i: _TextRelay(jobs[i].ask.on_text) for i in logits}

        def decode(ids: list[int]) -> list[Any]:
            return greedy_decode_many(adapter, [
                DecodeJob(jobs[i].item.cache, logits[i], jobs[i].next_position, jobs[i].max_new_tokens, relays[i])
                for i in ids])

        def redo(ids: list[int]) -> None:
            for i in ids:
                engines[i].cache.restore(jobs[i].checkpoint + jobs[i].prompt_tokens)
                relays[i].replay()

        generations = _together(outcomes, list(logits), decode, redo)
        again = _shared_failures(generations)
        if again:  # a packed step failed: it ended every job in it with its error; rerun them one at a time
            logger.warning("a decode step shared by %d streams failed; answering them one at a time", len(again))
            redo(again)
            for i in again:
                del generations[i]
            generations.update(_each(outcomes, again, lambda i: decode([i])[0]))
    finally:
        for i, job in jobs.items():
            engines[i].cache.restore(job.checkpoint)
    t_end = time.perf_counter()
    for i, generation in generations.items():
        if isinstance(generation, BaseException):
            outcomes[i] = generation
            continue
        try:
            outcomes[i] = engines[i].finish_question(jobs[i], generation, t_prefill=t_prefill, t_end=t_end)
        except Exception as exc:  # noqa: BLE001 - one stream's failure stays that stream's
            outcomes[i] = exc
    return outcomes


def _each(outcomes: list[Any], ids: Sequence[int] | range, step: Callable[[int], Any]) -> dict[int, Any]:
    """``step(i)`` per stream; one that raises gets its exception as its outcome and drops out."""
    out = {}
    for i in ids:
        try:
            out[i] = step(i)
        except Exception as exc:  # noqa: BLE001 - one stream's failure stays that stream's
            outcomes[i] = exc
    return out


def _together(outcomes: list[Any], ids: list[int], call: Callable[[list[int]], Sequence[Any]],
              undo: Callable[[list[int]], Any] | None = None) -> dict[int, Any]:
    """One shared ``call(ids)``; if it raises, ``undo(ids)`` and call each stream alone (culprits fail)."""
    if not ids:
        return {}
    try:
        return dict(zip(ids, call(ids), strict=True))
    except Exception as exc:  # noqa: BLE001 - isolated below
        if undo is not None:
            undo(ids)
        if len(ids) == 1:
            outcomes[ids[0]] = exc
            return {}
        logger.warning("a model call shared by %d streams failed (%s: %s); running them one at a time",
                       len(ids), type(exc).__name__, exc)
    out = {}
    for i in ids:
        try:
            out[i] = call([i])[0]
        except Exception as exc:  # noqa: BLE001 - the culprit
            if undo is not None:
                undo([i])
            outcomes[i] = exc
    return out


def _shared_failures(results: dict[int, Any]) -> list[int]:
    """Ids whose result is an exception shared with another id: a failed shared call, not their own."""
    counts = collections.Counter(id(r) for r in results.values() if isinstance(r, BaseException))
    return [i for i, r in results.items() if isinstance(r, BaseException) and counts[id(r)] > 1]


class _TextRelay:
    """Passes an answer's pieces on, once: after a retry, text already passed on is not sent again."""

    def __init__(self, on_text: Callable[[str], None] | None) -> None:
        self.on_text = on_text
        self.sent = 0  # characters passed on
        self.seen = 0  # characters generated in the current try

    def replay(self) -> None:
        """The answer is generated again from its start."""
        self.seen = 0

    def __call__(self, piece: str) -> None:
        start, self.seen = self.seen, self.seen + len(piece)
        if self.seen <= self.sent:
            return
        fresh = piece[max(0, self.sent - start):]
        self.sent = self.seen
        if self.on_text is not None:
            self.on_text(fresh)
