"""Offline clip question answering through an adapter, with any registered compressor.

``answer_clip`` is the whole offline path of the paper: encode the clip (full layout, TMRoPE ids and
audio saliency), plan and apply the compression, prefill only the kept tokens at their original
positions, and decode greedily from the uncompressed model's next position.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from omnizip.adapters.base import AVCursor, OmniAdapter
from omnizip.adapters.generation import greedy_decode
from omnizip.compressor import Compressor
from omnizip.plan import gather_kept
from omnizip.types import count_kept


class ContextTooLongError(ValueError):
    """The prompt (or question) does not fit the model's context."""


class EmptyClipError(ValueError):
    """The clip is shorter than one model time step (a still image, a 0.1-s clip): nothing to answer from."""


def min_video_fps(adapter: OmniAdapter) -> float:
    """Lowest frame rate the model's layout accepts (0: any).

    Qwen2.5-Omni interleaves audio and video per ``seconds_per_chunk`` chunk; a temporal grid step longer
    than a chunk (frames sampled below ``temporal_patch_size / seconds_per_chunk`` = 1 fps) leaves chunks
    without whole frames. Qwen3-Omni orders tokens per grid step and takes any rate.
    """
    spec = adapter.spec
    if spec.family != "qwen2_5_omni":
        return 0.0
    return spec.temporal_patch_size / spec.seconds_per_chunk


def check_clip(
    adapter: OmniAdapter,
    audio_samples: int,
    n_frames: int,
    *,
    video_fps: float | None = None,
    text_tokens: int = 0,
    max_new_tokens: int = 0,
) -> int:
    """Check that a clip can be encoded and fits the context, before any encoding (cheap).

    Args:
        adapter: the model adapter (its :class:`ModelSpec`).
        audio_samples: 16 kHz mono samples of the clip (0 when it has none).
        n_frames: frames sampled from the clip (0 when it has none).
        video_fps: rate the frames were sampled at (default: the model's).
        text_tokens: prompt text tokens around the A/V block.
        max_new_tokens: decoding budget.

    Returns:
        The estimated last position id of the prompt plus the answer.

    Raises:
        EmptyClipError: the clip is shorter than one temporal grid step of the model.
        ContextTooLongError: frames sampled too sparsely for the layout, or positions beyond the model's
            range; the message says how long the clip is and the limit.
    """
    spec = adapter.spec
    fps = video_fps or spec.fps
    media_s = max(audio_samples / 16000.0, n_frames / fps if n_frames else 0.0)
    if media_s < spec.second_per_grid - 1e-6:
        raise EmptyClipError(
            f"the clip holds {media_s:.2f} s of media ({n_frames} frame(s), {audio_samples / 16000.0:.2f} s of "
            f"audio), less than the model's {spec.second_per_grid:g}-s time step: nothing to answer from"
        )
    needed = int(text_tokens + media_s * spec.position_id_per_seconds + 4 + max_new_tokens)
    if needed >= spec.max_positions:
        limit_s = (spec.max_positions - text_tokens - 4 - max_new_tokens) / spec.position_id_per_seconds
        raise ContextTooLongError(
            f"the clip is {media_s:.0f} s; it needs positions up to {needed}, more than the model's "
            f"{spec.max_positions} (about {limit_s:.0f} s of media): cut the clip, or follow it live with the "
            "rolling cache (omnizip stream --source file:PATH --no-realtime)"
        )
    low = min_video_fps(adapter)
    if n_frames > 1 and fps < low - 1e-9:
        raise ContextTooLongError(
            f"the clip is {media_s:.0f} s but only {n_frames} frames were sampled ({fps:.2f} fps); the model "
            f"needs at least {low:g} fps: pass --max-frames {math.floor(media_s * low) + 1} or more, or follow it "
            "live with the rolling cache (omnizip stream --source file:PATH --no-realtime)"
        )
    return needed


@dataclass(frozen=True)
class PreparedPrompt:
    """A compressed prompt ready to prefill.

    Attributes:
        embeds: ``[L', D]`` kept embeddings (text + kept A/V, anchors merged).
        positions: ``[3, L']`` their original position ids.
        extras: family extras for the text model (Qwen3 deepstack), or None.
        next_position: position of the first generated token (uncompressed model's).
        accounting: token counts (``tokens_total``, ``tokens_kept``, per modality) and timings (ms).
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    extras: dict[str, Any] | None
    next_position: float
    accounting: dict[str, float]


@dataclass(frozen=True)
class ClipAnswer:
    """Answer to a question about a clip, with the token accounting and timings."""

    answer: str
    method: str
    tokens_total: int
    tokens_kept: int
    audio_tokens_total: int
    audio_tokens_kept: int
    video_tokens_total: int
    video_tokens_kept: int
    encode_ms: float
    compress_ms: float
    prefill_ms: float
    decode_ms: float
    generated_tokens: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _check(audio: np.ndarray | None, frames: np.ndarray | None) -> tuple[bool, bool]:
    has_audio = audio is not None and len(audio) > 0
    has_video = frames is not None and len(frames) > 0
    if not (has_audio or has_video):
        raise ValueError("the clip has neither audio nor video")
    return has_audio, has_video


def prepare_clip_prompt(
    adapter: OmniAdapter,
    audio: np.ndarray | None,
    frames: np.ndarray | None,
    question: str,
    compressor: Compressor,
    *,
    saliency: str = "global",
    max_new_tokens: int = 64,
    system_prompt: str | None = None,
    video_fps: float | None = None,
) -> PreparedPrompt:
    """Build the compressed prompt of a clip + question.

    Args:
        adapter: the model adapter.
        audio: ``[n]`` float32 mono 16 kHz, or None.
        frames: ``[F, H, W, 3]`` uint8 at ``adapter.spec.fps``, or None.
        question: the user's question.
        compressor: an offline compressor (``plan`` over the whole clip).
        saliency: audio saliency variant (``global`` as the reference, or ``block``).
        max_new_tokens: decoding budget, counted against the context.
        system_prompt: overrides the adapter's system prompt.
        video_fps: rate the frames were sampled at (default: the model's 2 fps).

    Raises:
        ContextTooLongError: the full prompt plus ``max_new_tokens`` exceeds the model's positions
            (checked before encoding, see :func:`check_clip`, and exactly after it).
        EmptyClipError: the clip is shorter than one model time step.
    """
    has_audio, has_video = _check(audio, frames)
    parts = adapter.prompt_parts(question, system_prompt)
    open_ids = adapter.open_ids(has_audio, has_video)
    close_ids = adapter.close_ids(has_audio, has_video)
    p_open = len(parts.prefix)
    check_clip(
        adapter, len(audio) if audio is not None else 0, len(frames) if frames is not None else 0,
        video_fps=video_fps, text_tokens=p_open + len(parts.suffix) + len(open_ids) + len(close_ids),
        max_new_tokens=max_new_tokens,
    )
    open_pos = adapter.special_positions(len(open_ids), p_open)
    t0 = time.perf_counter()
    encoded = adapter.encode_av(
        audio, frames, AVCursor(base=int(open_pos[-1]) + 1), saliency=saliency, video_fps=video_fps
    )
    t1 = time.perf_counter()
    layout = encoded.layout
    plan = compressor.plan(layout)
    kept_embeds, kept_pos, kept_index = gather_kept(layout, plan)
    t2 = time.perf_counter()
    close_pos = adapter.special_positions(len(close_ids), encoded.close_position)
    suffix_start = close_pos[-1] + 1
    n_suffix = len(parts.suffix)
    last_position = suffix_start + n_suffix - 1
    if last_position + max_new_tokens >= adapter.spec.max_positions:
        raise ContextTooLongError(
            f"the clip and question need positions up to {last_position + max_new_tokens}, more than the "
            f"model's {adapter.spec.max_positions}; use a shorter clip or question"
        )
    embeds = torch.cat([
        adapter.embed_ids(parts.prefix + open_ids),
        kept_embeds.to(adapter.dtype),
        adapter.embed_ids(close_ids + parts.suffix),
    ])
    assert kept_pos is not None
    positions = torch.cat([
        adapter.positions_1d([float(i) for i in range(p_open)] + open_pos).to(kept_pos.device),
        kept_pos.to(adapter.position_dtype),
        adapter.positions_1d(close_pos + [suffix_start + i for i in range(n_suffix)]).to(kept_pos.device),
    ], dim=1)
    extras = adapter.av_extras(
        encoded, kept_index, offset=p_open + len(open_ids), total=int(embeds.shape[0])
    )
    counts = count_kept(layout, plan.keep)
    n_text = p_open + len(open_ids) + len(close_ids) + n_suffix
    accounting = {
        "tokens_total": layout.num_tokens + n_text,
        "tokens_kept": int(kept_embeds.shape[0]) + n_text,
        "audio_tokens_total": counts["audio_total"],
        "audio_tokens_kept": counts["audio_kept"],
        "video_tokens_total": counts["video_total"],
        "video_tokens_kept": counts["video_kept"],
        "encode_ms": (t1 - t0) * 1e3,
        "compress_ms": (t2 - t1) * 1e3,
    }
    return PreparedPrompt(embeds, positions, extras, float(last_position + 1), accounting)


def answer_clip(
    adapter: OmniAdapter,
    audio: np.ndarray | None,
    frames: np.ndarray | None,
    question: str,
    compressor: Compressor,
    *,
    saliency: str = "global",
    max_new_tokens: int = 64,
    system_prompt: str | None = None,
    video_fps: float | None = None,
    on_text: Callable[[str], None] | None = None,
) -> ClipAnswer:
    """Answer ``question`` about a clip (see :func:`prepare_clip_prompt` for the arguments).

    Returns:
        The :class:`ClipAnswer`; ``prefill_ms`` times the text-model prefill of the kept tokens
        (the encoders are in ``encode_ms``, the planning in ``compress_ms``).
    """
    prompt = prepare_clip_prompt(
        adapter, audio, frames, question, compressor,
        saliency=saliency, max_new_tokens=max_new_tokens, system_prompt=system_prompt, video_fps=video_fps,
    )
    cache = adapter.new_cache()
    _sync(adapter)
    t0 = time.perf_counter()
    logits = adapter.forward(prompt.embeds, prompt.positions, cache, extras=prompt.extras)
    _sync(adapter)
    t1 = time.perf_counter()
    assert logits is not None
    gen = greedy_decode(
        adapter, cache, logits, prompt.next_position, max_new_tokens=max_new_tokens, on_text=on_text
    )
    t2 = time.perf_counter()
    acc = prompt.accounting
    return ClipAnswer(
        answer=gen.text.strip(),
        method=compressor.name,
        tokens_total=int(acc["tokens_total"]),
        tokens_kept=int(acc["tokens_kept"]),
        audio_tokens_total=int(acc["audio_tokens_total"]),
        audio_tokens_kept=int(acc["audio_tokens_kept"]),
        video_tokens_total=int(acc["video_tokens_total"]),
        video_tokens_kept=int(acc["video_tokens_kept"]),
        encode_ms=acc["encode_ms"],
        compress_ms=acc["compress_ms"],
        prefill_ms=(t1 - t0) * 1e3,
        decode_ms=(t2 - t1) * 1e3,
        generated_tokens=len(gen.token_ids),
    )


def _sync(adapter: OmniAdapter) -> None:
    if adapter.device.type == "cuda":
        torch.cuda.synchronize(adapter.device)
