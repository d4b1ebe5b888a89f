"""OmniZip (arXiv 2511.14582): audio-guided dynamic token compression, offline and streaming.

* ``mode="offline"`` follows the v2 reference semantics of the spec exactly, over the whole layout:
  global audio top-k by saliency, anchors every ``Δ``-th remaining token, cross-modal scores against
  *all* video tokens, softmax-weighted top-``G`` anchor merge, per-window retention scores, the
  linear map to ``[rho_min, rho_max]``, the reference re-normalisation (lowest/highest fixed, one
  multiplicative and one additive pass), and ISTC with ``floor(P * (1 - r_w))`` tokens per frame.
  Windows (chunks) with video but no audio, including a video without any audio, get plain ISTC at
  ``rho_video``.
* ``mode="streaming"`` (:mod:`omnizip.methods.omnizip_stream`) processes chunks in order, each seeing
  only itself and the past, with the online budget controller of :mod:`omnizip.budget`.

``rho_video = 0`` disables video pruning (the ratio bounds would otherwise still prune). Scores are
float32; ties go to the earlier token (see :mod:`omnizip.audio` and :mod:`omnizip.video`).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from omnizip.budget import frame_keep_count, reference_video_ratios
from omnizip.compressor import Compressor
from omnizip.config import OmniZipConfig
from omnizip.methods._layout import build_plan, index_layout, per_chunk_fraction
from omnizip.methods._stages import offline_audio_stage, run_istc
from omnizip.methods.omnizip_stream import OmniZipStreamingCompressor
from omnizip.registry import register
from omnizip.types import KeepPlan, TokenLayout


class OmniZipOfflineCompressor:
    """Reference-exact OmniZip over a whole clip (stateless).

    Args:
        config: hyper-parameters; ``mode`` is ignored here (use :func:`make_omnizip`).
    """

    name = "omnizip"
    streaming = False

    def __init__(self, config: OmniZipConfig) -> None:
        self.config = config

    def reset(self) -> None:
        """Nothing to forget (stateless)."""

    def plan(self, layout: TokenLayout) -> KeepPlan:
        """Plan a whole clip (spec Stages B-E).

        Args:
            layout: the clip's tokens; ``audio_saliency`` ``[N_audio]`` ranks the audio (``None``:
                evenly spaced salient tokens).

        Returns:
            The plan; ``chunk_video_ratio`` holds the ratio applied to each chunk.
        """
        cfg = self.config
        index = index_layout(layout)
        sel = offline_audio_stage(layout, index, cfg)
        retention = per_chunk_fraction(sel.keep, index.audio_chunk, index.audio_counts)
        video_keep = None
        if cfg.rho_video == 0.0 or index.video_idx.numel() == 0:
            ratios = [0.0 if n else math.nan for n in index.video_counts]
        else:
            ratios = reference_video_ratios(
                retention, index.video_counts, rho_video=cfg.rho_video, rho_min=cfg.rho_min, rho_max=cfg.rho_max
            )
            per_chunk = [frame_keep_count(index.tokens_per_frame, r) if n else 0 for r, n in
                         zip(ratios, index.video_counts, strict=True)]
            counts = torch.tensor(per_chunk, dtype=torch.int64, device=index.frame_chunk.device)[index.frame_chunk]
            video_keep = run_istc(layout, index, counts, cfg)
        return build_plan(
            layout,
            index,
            audio_keep=sel.keep,
            video_keep=video_keep,
            merges=(sel.merge_dst, sel.merge_src, sel.merge_weight),
            chunk_video_ratio=ratios,
            chunk_audio_retention=retention,
        )


@register("omnizip")
def make_omnizip(config: OmniZipConfig) -> Compressor:
    """OmniZip in ``config.mode`` (``offline`` or ``streaming``)."""
    if config.mode == "streaming":
        return OmniZipStreamingCompressor(config)
    return OmniZipOfflineCompressor(config)


@register("omnizip-lbyl")
def make_omnizip_lbyl(config: OmniZipConfig) -> Compressor:
    """Streaming OmniZip with ``vision_budget="audio"`` (listen before you look, :mod:`omnizip.vision_budget`).

    Raises:
        ValueError: in ``offline`` mode (the vision budget is decided window by window, before the
            vision tower of each window; a whole clip has no such point).
    """
    if config.mode != "streaming":
        raise ValueError("omnizip-lbyl (vision_budget: audio) works in streaming mode only")
    compressor = OmniZipStreamingCompressor(dataclasses.replace(config, vision_budget="audio"))
    compressor.name = "omnizip-lbyl"
    return compressor
