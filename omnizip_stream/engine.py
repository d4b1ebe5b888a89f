"""StreamEngine: per window encode -> compress -> prefill; answer questions from a cache checkpoint.

Synchronous and single-threaded on purpose: a :class:`~omnizip_stream.server.worker.ModelWorker` runs
it on its one model thread. Windows and questions go through phases (``begin_*`` -> shared model call
-> ``compress_window`` -> shared prefill -> ``commit_window`` / ``finish_question``) so that several
streams' engines run one model call per stage (:mod:`omnizip_stream.batch`); :meth:`StreamEngine.ingest`
and :meth:`StreamEngine.answer` are the batches of one. The engine holds no compression math (that is the compressor's) and no
position math beyond placing windows on the stream's timeline (that is the adapter's and the cache's).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from omnizip import make_compressor
from omnizip.adapters.base import AVCursor, EncodedAV
from omnizip.adapters.batch_encode import EncodeRequest
from omnizip.adapters.batch_forward import ForwardItem, forward_many
from omnizip.adapters.generation import Generation
from omnizip.plan import gather_kept
from omnizip.preprocess import PreparedVideo
from omnizip.types import Modality, count_kept
from omnizip_stream.batch import (  # noqa: F401 - StageClock is re-exported
    Ask,
    QuestionJob,
    StageClock,
    WindowJob,
    answer_questions,
    cuda_device,
    ingest_windows,
)
from omnizip_stream.config import StreamConfig
from omnizip_stream.kv import RollingKVCache, Segment
from omnizip_stream.query.base import QueryError
from omnizip_stream.window import Window
from omnizip_stream.windowing import check_on_grid

logger = logging.getLogger(__name__)


@dataclass
class WindowReport:
    """What happened to one window (timings in ms, token counts)."""

    index: int
    t0_s: float
    t1_s: float
    audio_tokens: int
    audio_kept: int
    video_tokens: int
    video_kept: int
    evicted: list[int]
    timings_ms: dict[str, float]


@dataclass
class QueryResult:
    """A generated answer with its latency measured on the model thread."""

    text: str
    tokens: list[int]
    ttft_ms: float
    total_ms: float
    window_range: tuple[int, int] | None
    time_range_s: tuple[float, float] | None
    prompt_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)
    spans: dict[str, Any] = field(default_factory=dict)  # sink/recent ranges: the Answer's fields of the same names


class StreamEngine:
    """Owns the adapter, the compressor and the rolling cache of one stream.

    Args:
        adapter: a loaded model adapter.
        config: the stream configuration.
    """

    def __init__(self, adapter: Any, config: StreamConfig) -> None:
        config = config.for_model(adapter.spec)  # window_s filled from the model; whole chunks (StreamConfigError)
        self.adapter = adapter
        self.config = config
        self.compressor = make_compressor(config.method, config.compression)
        self.cache = RollingKVCache(
            adapter,
            max_tokens=config.cache_max_tokens,
            max_bytes=int(config.cache_max_mb * 2**20),
            reserve_tokens=config.query_reserve_tokens,
            reanchor=config.reanchor,
            reanchor_at=config.reanchor_at,
        )
        self.has_audio = True
        self.has_video = True
        self.windows_ingested = 0
        self.totals = {"audio_total": 0, "audio_kept": 0, "video_total": 0, "video_kept": 0}
        self._base = 0
        self._prev_window: Window | None = None
        self._prev_cursor: AVCursor | None = None
        self._started = False
        self._gpu_peak_mb: float | None = None

    # ------------------------------------------------------------------ stream start
    def start(self) -> None:
        """Prefill the sink prefix: system prompt, start of the user turn, A/V opening tokens."""
        parts = self.adapter.prompt_parts("", self.config.system_prompt)
        open_ids = self.adapter.open_ids(self.has_audio, self.has_video)
        p_open = len(parts.prefix)
        open_pos = self.adapter.special_positions(len(open_ids), p_open)
        ids = parts.prefix + open_ids
        positions = self.adapter.positions_1d(list(range(p_open)) + open_pos).contiguous()
        self._base = open_pos[-1] + 1
        self.cache.append(Segment(
            kind="prefix", window_index=-1, t0_s=0.0, t1_s=0.0, positions=positions,
            modality=torch.full((len(ids),), int(Modality.TEXT)), embeds=self.adapter.embed_ids(ids),
            extras=None, close_position=float(self._base),
        ))
        self._started = True

    # ------------------------------------------------------------------ windows
    def _cursor(self, window: Window, audio: np.ndarray) -> AVCursor:
        spec = self.adapter.spec
        audio_tokens = int(round(window.t0_s * spec.audio_tokens_per_s))
        grids = int(round(window.t0_s / spec.second_per_grid))
        tail, mel_max = None, None
        prev, prev_cursor = self._prev_window, self._prev_cursor
        if prev is not None and prev_cursor is not None and abs(prev.t1_s - window.t0_s) < 1e-6 and audio.size:
            tail, mel_max = prev_cursor.audio_tail, prev_cursor.mel_max_log10
        return AVCursor(self._base, audio_tokens, grids, tail, mel_max)

    def ingest(self, window: Window, prepared: PreparedVideo | None = None) -> WindowReport:
        """Encode, compress and prefill one window (evicting and re-anchoring as needed).

        ``prepared``: the window's frames already resized and patchified (off the model thread).
        """
        outcome = ingest_windows([(self, window)], [prepared])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def begin_window(self, window: Window, prepared: PreparedVideo | None = None) -> WindowJob:
        """Window phase 1 (:mod:`omnizip_stream.batch`): audio, frames and cursor of ``window`` to encode.

        ``prepared``: its frames' patches made ahead (used by the encoder where they match the frames).
        """
        if not self._started:
            self.start()
        window_s = self.config.window_s
        assert window_s is not None  # filled by for_model in __init__
        check_on_grid(window, self.adapter.spec.fps, window_s)  # windows come on the model's grid (windowing.on_grid)
        audio, frames = window.audio, window.frames
        cursor = self._cursor(window, audio)
        planner = getattr(self.compressor, "vision_planner", lambda: None)()  # vision_budget: audio (lbyl)
        request = EncodeRequest(audio if audio.size else None, frames if len(frames) else None, cursor,
                                saliency=self.config.compression.saliency, stream=True, vision_plan=planner,
                                prepared_video=prepared)
        return WindowJob(window, request)

    def compress_window(self, job: WindowJob, encoded: EncodedAV) -> ForwardItem:
        """Window phase 3: compress ``encoded``, make room (evict, re-anchor), place it; returns its prefill."""
        spec = self.adapter.spec
        window = job.window
        layout = encoded.layout
        plan = self.compressor.plan(layout)
        kept_embeds, kept_pos, kept_index = gather_kept(layout, plan)
        assert kept_pos is not None
        logical_start = float(self._base + window.t0_s * spec.position_id_per_seconds)
        span = float(encoded.close_position) - logical_start + 2
        evicted = self.cache.evict_for(int(kept_embeds.shape[0]), span)
        shift = self.cache.placement_shift(logical_start, span)
        modality = layout.modality[kept_index]
        positions = self.adapter.shift_positions(kept_pos, modality, torch.tensor(shift)) if shift else kept_pos.clone()
        extras = self.adapter.av_extras(encoded, kept_index, offset=0, total=int(kept_embeds.shape[0]))
        index = self.windows_ingested
        kind = "sink" if index < self.config.sink_windows else "window"
        window_s = self.config.window_s
        assert window_s is not None  # filled by for_model in __init__
        job.encoded, job.keep, job.evicted = encoded, plan.keep, evicted
        job.segment = Segment(
            kind=kind, window_index=index, t0_s=window.t0_s, t1_s=window.t0_s + window_s,
            positions=positions, modality=modality, embeds=kept_embeds, extras=extras,
            close_position=float(encoded.close_position) - shift,
        )
        return self.cache.prepared_append(job.segment)

    def commit_window(self, job: WindowJob, stage_ms: dict[str, float], gpu_peak_mb: float | None) -> WindowReport:
        """Window phase 5, once its prefill ran: record the segment and the stream's counters.

        Args:
            job: the window, through phase 3.
            stage_ms: the stage times of the batch it ran in.
            gpu_peak_mb: peak GPU memory during that batch (None on the CPU).
        """
        assert job.segment is not None and job.encoded is not None
        window, encoded = job.window, job.encoded
        self.cache.commit(job.segment)
        if gpu_peak_mb is not None:
            self._gpu_peak_mb = max(self._gpu_peak_mb or 0.0, gpu_peak_mb)
        self.windows_ingested += 1
        self._prev_window, self._prev_cursor = window, encoded.next_cursor
        counts = count_kept(encoded.layout, job.keep)
        if "vision_plan" in encoded.extras:  # a smaller grid was encoded: the budget is of the full one
            counts["video_total"] = encoded.extras["vision_plan"].nominal_tokens
        for key in self.totals:
            self.totals[key] += counts[key]
        stage_events = getattr(encoded, "stage_ms", None)  # CUDA events are read after the batch's last one
        timings = stage_events() if stage_events is not None else dict(getattr(encoded, "timings", None) or {})
        timings.update(stage_ms)
        if "video_patches" in encoded.extras:
            timings["video_patches"] = float(encoded.extras["video_patches"])  # a count: vision-tower patches
        return WindowReport(job.segment.window_index, window.t0_s, job.segment.t1_s, counts["audio_total"],
                            counts["audio_kept"], counts["video_total"], counts["video_kept"], job.evicted, timings)

    # ------------------------------------------------------------------ queries
    def question_ids(self, question: str) -> list[int]:
        """Token ids of the question's user-turn tail; raises ``QueryError(too_long)`` past the limit."""
        if not question.strip():
            raise QueryError("bad_request", "the question is empty")
        ids = self.adapter.prompt_parts(question, self.config.system_prompt).suffix
        if len(ids) > self.config.max_question_tokens:
            raise QueryError(
                "too_long",
                f"the question is {len(ids)} tokens; at most {self.config.max_question_tokens} fit the context",
            )
        return ids

    def begin_question(self, ask: Ask) -> QuestionJob:
        """Question phase 1 (:mod:`omnizip_stream.batch`): the prefill of the A/V closing tokens and the question.

        Raises:
            QueryError: ``not_ready`` (no window yet), ``bad_request`` or ``too_long``.
        """
        if not self._started:
            self.start()
        if not self.cache.windows():
            raise QueryError("not_ready", "no window of the stream has been ingested yet; ask again in a moment")
        submitted_at = ask.submitted_at if ask.submitted_at is not None else time.perf_counter()
        max_new = max(1, min(int(ask.max_new_tokens), self.config.max_new_tokens))
        suffix = self.question_ids(ask.question)
        close_ids = self.adapter.close_ids(self.has_audio, self.has_video)
        close_pos = self.adapter.special_positions(len(close_ids), self.cache.close_position())
        start = close_pos[-1] + 1
        positions = self.adapter.positions_1d(close_pos + [start + i for i in range(len(suffix))])
        item = ForwardItem(self.adapter.embed_ids(close_ids + suffix), positions, self.cache.cache, logits=True)
        return QuestionJob(ask, submitted_at, max_new, self.cache.checkpoint(), item, float(start + len(suffix)),
                           len(close_ids) + len(suffix))

    def finish_question(self, job: QuestionJob, generation: Generation, *, t_prefill: float,
                        t_end: float) -> QueryResult:
        """Question phase 3, once the cache is restored: the result (TTFT = ``t_prefill - submitted_at``)."""
        spans = self.cached_spans()
        t0 = job.submitted_at
        return QueryResult(
            text=generation.text.strip(), tokens=generation.token_ids, ttft_ms=(t_prefill - t0) * 1e3,
            total_ms=(t_end - t0) * 1e3, window_range=spans.pop("window_range"),
            time_range_s=spans.pop("time_range_s"), prompt_tokens=job.prompt_tokens,
            extra={"prefill_ms": (t_prefill - t0) * 1e3, "evicted_windows": self.cache.events.windows_evicted,
                   **self.visible_av_tokens()},
            spans=spans,
        )

    def question_logits(self, question: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[V]`` of the question's last position and the appended positions; cache restored.

        For tests and diagnostics: the same computation as the start of :meth:`answer`.
        """
        job = self.begin_question(Ask(question, 1))
        try:
            logits = forward_many(self.adapter, [job.item])[0]
        finally:
            self.cache.restore(job.checkpoint)
        assert logits is not None
        return logits, torch.tensor(job.next_position)

    def answer(
        self,
        question: str,
        max_new_tokens: int,
        *,
        submitted_at: float | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> QueryResult:
        """Answer from the current stream state; the cache is restored afterwards.

        Args:
            question: the user's question.
            max_new_tokens: answer budget (capped by the config's ``max_new_tokens``).
            submitted_at: ``time.perf_counter()`` of the submission, for TTFT/total latency.
            on_text: receives each new piece of the answer.
        """
        outcome = answer_questions([(self, Ask(question, max_new_tokens, submitted_at, on_text))])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def visible_av_tokens(self) -> dict[str, int]:
        """``audio_tokens`` / ``video_tokens``: the A/V tokens in the cache's windows (what an answer attends to)."""
        windows = self.cache.windows()
        if not windows:
            return {"audio_tokens": 0, "video_tokens": 0}
        counts = torch.bincount(torch.cat([s.modality.reshape(-1) for s in windows]).long(), minlength=3).tolist()
        return {"audio_tokens": int(counts[Modality.AUDIO]), "video_tokens": int(counts[Modality.VIDEO])}

    def cached_spans(self) -> dict[str, Any]:
        """What an answer can see now: window index and time ranges of the cache, sink and recent apart.

        Returns:
            ``window_range`` / ``time_range_s`` (first to last cached window), ``sink_window_range`` /
            ``sink_time_range_s``, ``recent_window_range`` / ``recent_time_range_s`` (None when
            empty), ``windows_cached`` and ``windows_evicted``.
        """
        out: dict[str, Any] = {}
        for name, segments in (("", self.cache.windows()), ("sink_", self.cache.sink_windows()),
                               ("recent_", self.cache.recent_windows())):
            out[f"{name}window_range"] = (segments[0].window_index, segments[-1].window_index) if segments else None
            out[f"{name}time_range_s"] = (segments[0].t0_s, segments[-1].t1_s) if segments else None
        out["windows_cached"] = len(self.cache.windows())
        out["windows_evicted"] = self.cache.events.windows_evicted
        return out

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict[str, Any]:
        """Counters of the stream (tokens, cache, retention)."""
        t = self.totals
        return {
            "windows_ingested": self.windows_ingested,
            "windows_evicted": self.cache.events.windows_evicted,
            "reanchors": self.cache.events.reanchors,
            "kv_tokens": self.cache.stored_tokens,
            "kv_bytes": self.cache.kv_bytes(),
            "store_bytes": self.cache.store_bytes(),
            "kv_max_tokens": self.cache.max_tokens,
            "max_position": self.cache.max_position(),
            "model_max_positions": self.adapter.spec.max_positions,
            "retention_audio": t["audio_kept"] / t["audio_total"] if t["audio_total"] else None,
            "retention_video": t["video_kept"] / t["video_total"] if t["video_total"] else None,
            "tokens_seen": t["audio_total"] + t["video_total"],
            "tokens_kept": t["audio_kept"] + t["video_kept"],
            # Peak GPU memory while this stream's windows ran (CUDA only; absent on the CPU).
            **({"gpu_peak_mb": self._gpu_peak_mb} if cuda_device(self.adapter) is not None else {}),
        }
