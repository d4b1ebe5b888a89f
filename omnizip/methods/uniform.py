"""``uniform``: the paper's "w/o DP" ablation — OmniZip's audio stage, a fixed video ratio.

Audio is compressed exactly like OmniZip (salient top-k, anchors, cross-modal merge): over the whole
layout in offline mode, per chunk (window top-k, scores against the chunk's own video) in streaming
mode. Video gets no audio guidance: every chunk is pruned by ISTC at ``rho_video``, i.e.
``floor(P (1 - rho_video))`` tokens per frame. Stateless, so streaming use is one window at a time.
"""

from __future__ import annotations

import torch

from omnizip.audio import salient_count, salient_mask
from omnizip.compressor import Compressor, StatelessCompressor
from omnizip.config import OmniZipConfig
from omnizip.methods._layout import build_plan, index_layout
from omnizip.methods._stages import (
    cat_merges,
    checked_saliency,
    offline_audio_stage,
    offset_selection,
    run_istc,
    uniform_frame_counts,
    windowed_audio_stage,
)
from omnizip.registry import register
from omnizip.types import KeepPlan, TokenLayout


class UniformCompressor(StatelessCompressor):
    """OmniZip audio + fixed-ratio ISTC video (stateless).

    Args:
        config: hyper-parameters; ``mode`` selects whole-layout or per-chunk audio selection.
    """

    name = "uniform"

    def plan(self, layout: TokenLayout) -> KeepPlan:
        """Plan the layout (audio like OmniZip, video at ``rho_video`` everywhere)."""
        cfg = self.config
        index = index_layout(layout)
        if self.streaming:
            saliency = checked_saliency(layout)
            audio_keep = torch.zeros(int(index.audio_idx.numel()), dtype=torch.bool, device=layout.embeds.device)
            parts = []
            for c in range(index.num_chunks):
                a0, na = index.audio_starts[c], index.audio_counts[c]
                if not na:
                    continue
                sal = None if saliency is None else saliency[a0 : a0 + na]
                sel = windowed_audio_stage(layout, index, cfg, c, salient_mask(sal, na, salient_count(na, cfg.rho_audio), device=layout.embeds.device))
                audio_keep[a0 : a0 + na] = sel.keep
                parts.append(offset_selection(sel, a0))
            merges = cat_merges(parts)
        else:
            sel = offline_audio_stage(layout, index, cfg)
            audio_keep, merges = sel.keep, (sel.merge_dst, sel.merge_src, sel.merge_weight)
        video_keep = None
        if index.video_idx.numel():
            video_keep = run_istc(layout, index, uniform_frame_counts(index, cfg.rho_video), cfg)
        return build_plan(layout, index, audio_keep=audio_keep, video_keep=video_keep, merges=merges)


@register("uniform")
def make_uniform(config: OmniZipConfig) -> Compressor:
    """Build the fixed-ratio ("w/o DP") baseline."""
    return UniformCompressor(config)
