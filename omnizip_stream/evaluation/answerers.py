"""The two ways an item is answered: offline (the paper's setup) and through the live streaming path.

``OfflineAnswerer`` decodes the clip once per item and calls :func:`omnizip.qa.answer_clip` for every
setting (global audio saliency, OmniZip's reference semantics over the whole clip, a frame cap for long
videos). ``StreamingAnswerer`` replays the file through the real live pipeline: the sources' windower
(``open_windows("file:...", realtime=False)``) cuts it into 2-s windows, a fresh
:class:`~omnizip_stream.session.StreamSession` (the method in streaming mode, rolling KV cache)
ingests them, and the question is asked at the end of the clip. The replay is paced by the model
(each window is ingested before the next is pushed), so no video is shed: the result measures the
streaming compression and cache, not whether this machine keeps up with real time.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omnizip.registry import make_compressor
from omnizip_stream.evaluation.items import EvalItem
from omnizip_stream.evaluation.settings import EvalSetting, item_seed

logger = logging.getLogger(__name__)


class MediaFailure(Exception):
    """The item's media file is missing, corrupt or empty (one line); every setting of the item fails."""


class ItemFailure(Exception):
    """One setting of one item could not be answered (the clip and question do not fit the context ...).

    Attributes:
        kind: short machine-readable cause (``context``, ``internal``).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Outcome:
    """The model's reply to one item under one setting, with token accounting and timings.

    Attributes:
        response: the generated text.
        audio_tokens_total / audio_tokens_kept: audio tokens before / after compression (counted).
        video_tokens_total / video_tokens_kept: video tokens before / after compression (counted).
        prefill_ms: text-model prefill of the kept tokens (offline: the whole prompt; streaming: every
            window plus the question), in milliseconds.
        extra: path-specific timings and counters (encode/compress/decode ms, TTFT, windows, drops).
    """

    response: str
    audio_tokens_total: int
    audio_tokens_kept: int
    video_tokens_total: int
    video_tokens_kept: int
    prefill_ms: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AnswerOptions:
    """Settings shared by every item of a run.

    Attributes:
        max_new_tokens: answer budget (greedy decoding).
        system_prompt: system prompt of every question.
        g: audio tokens merged per anchor.
        anchor_ratio: anchors as a fraction of audio tokens.
        saliency: offline audio saliency (``global`` = reference, ``block``); streaming always uses ``block``.
        max_frames: offline frame cap for long videos (sampling becomes sparser), None for no cap.
        max_side: frames scaled at decode so the longer side is at most this (None: native size).
        window_s: streaming window length in seconds (None: the model's ``exact_window_s``).
        cache_max_tokens: streaming KV cache cap in tokens.
        model_name: model name recorded in the streaming config.
    """

    max_new_tokens: int = 16
    system_prompt: str | None = None
    g: int = 3
    anchor_ratio: float = 0.05
    saliency: str = "global"
    max_frames: int | None = 768
    max_side: int | None = 640
    window_s: float | None = None
    cache_max_tokens: int = 16384
    model_name: str = "tiny"


@dataclass
class OfflineMedia:
    """A decoded clip ready for :func:`omnizip.qa.answer_clip` (arrays as in :class:`~omnizip_stream.media.Clip`)."""

    audio: np.ndarray | None
    frames: np.ndarray | None
    video_fps: float | None
    duration_s: float


class OfflineAnswerer:
    """Answers with :func:`omnizip.qa.answer_clip` (offline OmniZip over the whole clip).

    Args:
        adapter: a loaded model adapter (reused for every item and setting).
        options: the run's settings.
    """

    path = "offline"

    def __init__(self, adapter: Any, options: AnswerOptions) -> None:
        self.adapter = adapter
        self.options = options

    def prepare(self, item: EvalItem) -> OfflineMedia:
        """Decode the item's media once (2 fps, frame cap, 16 kHz mono audio).

        Raises:
            MediaFailure: missing, corrupt or empty file.
        """
        from omnizip_stream.media import MediaError, decode_clip

        try:
            clip = decode_clip(item.video, fps=2.0, max_frames=self.options.max_frames, max_side=self.options.max_side)
        except (MediaError, OSError) as exc:
            raise MediaFailure(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        audio = clip.audio if clip.has_audio and clip.audio.size else None
        frames = clip.frames if clip.has_video and clip.frames.shape[0] else None
        if audio is None and frames is None:
            raise MediaFailure(f"{item.video}: neither audio nor video could be decoded")
        video_fps = None
        if frames is not None and frames.shape[0] > 1 and clip.duration_s > 0:
            video_fps = min(2.0, frames.shape[0] / clip.duration_s)  # sparser when the frame cap applied
        return OfflineMedia(audio, frames, video_fps, clip.duration_s)

    def answer(self, item: EvalItem, media: OfflineMedia, setting: EvalSetting, prompt: str) -> Outcome:
        """Answer ``prompt`` about ``media`` under ``setting``.

        Raises:
            ItemFailure: ``context`` when the clip and question do not fit the model.
        """
        from omnizip.qa import ContextTooLongError, answer_clip

        opts = self.options
        config = setting.omnizip_config(g=opts.g, anchor_ratio=opts.anchor_ratio, mode="offline",
                                        saliency=opts.saliency, seed=item_seed(item.benchmark, item.item_id))
        compressor = make_compressor(setting.method, config)
        try:
            result = answer_clip(self.adapter, media.audio, media.frames, prompt, compressor, saliency=opts.saliency,
                                 max_new_tokens=opts.max_new_tokens, system_prompt=opts.system_prompt,
                                 video_fps=media.video_fps)
        except ContextTooLongError as exc:
            raise ItemFailure("context", str(exc)) from None
        return Outcome(
            response=result.answer, audio_tokens_total=result.audio_tokens_total,
            audio_tokens_kept=result.audio_tokens_kept, video_tokens_total=result.video_tokens_total,
            video_tokens_kept=result.video_tokens_kept, prefill_ms=result.prefill_ms,
            extra={"encode_ms": result.encode_ms, "compress_ms": result.compress_ms, "decode_ms": result.decode_ms,
                   "generated_tokens": result.generated_tokens, "tokens_total": result.tokens_total,
                   "tokens_kept": result.tokens_kept, "duration_s": media.duration_s},
        )


class StreamingAnswerer:
    """Answers through the live path: file replay -> windower -> StreamSession -> question at the end.

    Args:
        adapter: a loaded model adapter (reused: every item/setting gets a fresh session and cache).
        options: the run's settings.
    """

    path = "streaming"

    def __init__(self, adapter: Any, options: AnswerOptions) -> None:
        self.adapter = adapter
        self.options = options

    def prepare(self, item: EvalItem) -> str:
        """Nothing to decode ahead (each setting replays the file); a missing file fails at once."""
        import os

        if not os.path.isfile(item.video):
            raise MediaFailure(f"{item.video}: no such file")
        return item.video

    def answer(self, item: EvalItem, media: str, setting: EvalSetting, prompt: str) -> Outcome:
        """Replay ``media`` through a fresh stream session under ``setting`` and ask ``prompt``.

        Raises:
            MediaFailure: the file cannot be decoded (or yields no window).
            ItemFailure: ``context`` when the question does not fit.
        """
        return asyncio.run(self._replay(item, media, setting, prompt))

    def _config(self, item: EvalItem, setting: EvalSetting) -> Any:
        from omnizip_stream.config import StreamConfig, stream_compression

        opts = self.options
        config = StreamConfig(
            model=opts.model_name, method=setting.method,
            compression=stream_compression(rho_audio=setting.rho_audio, rho_video=setting.rho_video, g=opts.g,
                                           anchor_ratio=opts.anchor_ratio),
            window_s=opts.window_s, cache_max_tokens=opts.cache_max_tokens, max_question_tokens=1024,
            max_new_tokens=opts.max_new_tokens, system_prompt=opts.system_prompt,
            seed=item_seed(item.benchmark, item.item_id) % (2**31),
        )
        return config.for_model(self.adapter.spec)  # window_s: the model's when not set

    async def _replay(self, item: EvalItem, path: str, setting: EvalSetting, prompt: str) -> Outcome:
        from omnizip_stream.query.base import QueryError
        from omnizip_stream.session import StreamSession
        from omnizip_stream.sources import SourceError, open_windows

        config = self._config(item, setting)
        window_prefill_ms = 0.0
        windows_in = 0
        try:
            async with open_windows(f"file:{path}", window_s=config.window_s, fps=2.0, realtime=False,
                                    max_side=self.options.max_side) as windows:
                async with StreamSession.from_config(config, adapter=self.adapter) as session:
                    async for window in windows:
                        await session.push_window(window)
                        await session.drain()  # paced by the model: nothing is shed
                        windows_in += 1
                        while session.reports:
                            window_prefill_ms += session.reports.popleft().timings_ms.get("prefill_ms", 0.0)
                    if windows_in == 0:
                        raise MediaFailure(f"{path}: no window could be decoded")
                    answer = await session.ask(prompt, self.options.max_new_tokens)
                    assert session.engine is not None
                    totals = dict(session.engine.totals)
                    stats = session.stats()
                    drops = windows.counters.snapshot()
        except SourceError as exc:
            raise MediaFailure(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except QueryError as exc:
            if exc.code == "too_long":
                raise ItemFailure("context", exc.message) from None
            raise
        if stats.get("windows_failed"):
            raise ItemFailure("internal", f"{stats['windows_failed']} window(s) of {path} failed in the model (see the log)")
        question_prefill_ms = float(answer.extra.get("prefill_ms", 0.0))
        return Outcome(
            response=answer.text, audio_tokens_total=totals["audio_total"], audio_tokens_kept=totals["audio_kept"],
            video_tokens_total=totals["video_total"], video_tokens_kept=totals["video_kept"],
            prefill_ms=window_prefill_ms + question_prefill_ms,
            extra={"ttft_ms": answer.ttft_ms, "total_ms": answer.total_ms, "question_prefill_ms": question_prefill_ms,
                   "window_prefill_ms": window_prefill_ms, "windows": windows_in,
                   "windows_evicted": stats.get("windows_evicted", 0),
                   "window_range": list(answer.window_range) if answer.window_range else None,
                   "video_dropped": int(drops.get("video_dropped", 0)) + int(stats.get("video_dropped", 0)),
                   "generated_tokens": answer.tokens_generated},
        )
