"""Audio and video stages shared by OmniZip and the baselines that reuse parts of it."""

from __future__ import annotations

import torch

from omnizip.audio import (
    AudioSelection,
    anchor_count,
    contiguous_start,
    max_cosine,
    salient_count,
    salient_mask,
    select_audio,
)
from omnizip.budget import frame_keep_count
from omnizip.config import OmniZipConfig
from omnizip.methods._layout import LayoutIndex
from omnizip.types import TokenLayout
from omnizip.video import istc_keep


def score_dtype(config: OmniZipConfig) -> torch.dtype:
    """The torch dtype of ``config.score_dtype``."""
    return torch.bfloat16 if config.score_dtype == "bfloat16" else torch.float32


def checked_saliency(layout: TokenLayout) -> torch.Tensor | None:
    """Return the layout's audio saliency as float32, or ``None``.

    Raises:
        ValueError: if it holds NaN or infinite values.
    """
    sal = layout.audio_saliency
    if sal is None:
        return None
    sal = sal.to(torch.float32)
    if sal.numel() and not bool(torch.isfinite(sal).all()):
        raise ValueError("audio_saliency must be finite")
    return sal


def video_starts(index: LayoutIndex) -> list[int]:
    """Offset of each chunk's first video token in video order."""
    out, acc = [], 0
    for n in index.video_counts:
        out.append(acc)
        acc += n
    return out


def rows_of(embeds: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``embeds[rows]``, as a view when the increasing ``rows`` are one contiguous range."""
    start = contiguous_start(rows)
    if start is None:
        return embeds[rows]
    return embeds[start : start + int(rows.numel())]


def audio_stage(
    audio: torch.Tensor,
    salient: torch.Tensor,
    embeds: torch.Tensor,
    video_rows: torch.Tensor,
    config: OmniZipConfig,
    video_norms: torch.Tensor | None = None,
) -> AudioSelection:
    """Anchors and cross-modal merge of one audio set against one video set (Stage B).

    Args:
        audio: ``[Na, D]`` audio embeddings.
        salient: ``[Na]`` bool salient tokens.
        embeds: ``[N, D]`` layout embeddings holding the video.
        video_rows: ``[Nv]`` int64 rows of ``embeds`` the cross-modal score looks at (empty: no video).
        config: hyper-parameters (``anchor_ratio``, ``g``).
        video_norms: ``[Nv]`` precomputed norms of those rows, or ``None``.

    Returns:
        The :class:`~omnizip.audio.AudioSelection` (audio-order indices).
    """
    cross = None
    if int(video_rows.numel()) > 0:
        def cross(pool_normed: torch.Tensor) -> torch.Tensor:
            return max_cosine(pool_normed, embeds, video_rows, norms=video_norms)
    return select_audio(
        audio,
        salient,
        anchor_num=anchor_count(int(audio.shape[0]), config.anchor_ratio),
        g=config.g,
        cross_modal=cross,
        score_dtype=score_dtype(config),
    )


def offline_audio_stage(layout: TokenLayout, index: LayoutIndex, config: OmniZipConfig) -> AudioSelection:
    """Run the reference's global audio stage: top-k over the whole clip, anchors and scores vs all video."""
    audio = layout.embeds[index.audio_idx]
    n = int(audio.shape[0])
    salient = salient_mask(checked_saliency(layout), n, salient_count(n, config.rho_audio), device=audio.device)
    return audio_stage(audio, salient, layout.embeds, index.video_idx, config)


def windowed_audio_stage(
    layout: TokenLayout,
    index: LayoutIndex,
    config: OmniZipConfig,
    chunk: int,
    salient: torch.Tensor,
    embeds: torch.Tensor | None = None,
    video_norms: torch.Tensor | None = None,
) -> AudioSelection:
    """Run the audio stage restricted to one chunk (its audio, its video); indices are chunk-relative.

    ``embeds`` may replace ``layout.embeds`` (e.g. a float32 copy made once per window);
    ``video_norms`` are the precomputed norms of *all* the layout's video tokens (video order).
    """
    embeds = layout.embeds if embeds is None else embeds
    a0, na = index.audio_starts[chunk], index.audio_counts[chunk]
    v0, nv = video_starts(index)[chunk], index.video_counts[chunk]
    audio = rows_of(embeds, index.audio_idx[a0 : a0 + na])
    norms = None if video_norms is None else video_norms[v0 : v0 + nv]
    return audio_stage(audio, salient, embeds, index.video_idx[v0 : v0 + nv], config, norms)


def offset_selection(sel: AudioSelection, offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dst, src, weight)`` of a chunk-relative selection, shifted to layout audio order."""
    return sel.merge_dst + offset, sel.merge_src + offset, sel.merge_weight


def cat_merges(
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Concatenate per-chunk merges (``None`` when there are none)."""
    if not parts:
        return None
    return (
        torch.cat([p[0] for p in parts]),
        torch.cat([p[1] for p in parts]),
        torch.cat([p[2] for p in parts]),
    )


def uniform_frame_counts(index: LayoutIndex, ratio: float) -> torch.Tensor:
    """``[F]`` per-frame keep counts at one fixed ratio (``floor(P * (1 - ratio))`` each)."""
    return torch.full(
        (index.num_frames,), frame_keep_count(index.tokens_per_frame, ratio), dtype=torch.int64,
        device=index.frame_chunk.device,
    )


def run_istc(
    layout: TokenLayout,
    index: LayoutIndex,
    counts: torch.Tensor,
    config: OmniZipConfig,
    embeds: torch.Tensor | None = None,
    exact: bool = True,
    video_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """ISTC keep-mask of the layout's video for per-frame keep counts ``counts`` (``[F]`` int64).

    ``embeds`` may replace ``layout.embeds`` (e.g. a float32 copy made once per window); ``exact``
    selects the reference's operation order (see :func:`omnizip.video.istc_keep`); ``video_norms``
    are precomputed norms of the video tokens for the fast path.
    """
    return istc_keep(
        layout.embeds if embeds is None else embeds,
        index.tokens_per_frame,
        index.frame_pos,
        counts,
        knn_k=config.knn_k,
        rows=index.video_idx,
        exact=exact,
        row_norms=video_norms,
        score_dtype=score_dtype(config),
    )
