"""``random``: random token dropping at OmniZip's nominal per-modality budget (the paper's Random).

Kept counts per modality are what OmniZip nominally keeps: audio ``round((1 - rho_audio) n)`` plus
the anchors (``round(anchor_ratio n)`` when ``G > 0``), video ``floor(P (1 - rho_video))`` per frame,
summed per chunk. Which tokens survive is a uniform random subset: over the whole layout for audio
and per chunk for video in offline mode, per chunk for both in streaming mode (stateless, one
window at a time). The generator is seeded with ``config.seed`` and the layout's start time
(``seed * 1_000_003 + round(t0_s * 1000)``), so a layout always gets the same plan for a given seed
while successive stream windows get different draws.
"""

from __future__ import annotations

import torch

from omnizip.audio import nominal_audio_keep
from omnizip.budget import frame_keep_count
from omnizip.compressor import Compressor, StatelessCompressor
from omnizip.config import OmniZipConfig
from omnizip.methods._layout import build_plan, index_layout
from omnizip.methods._stages import video_starts
from omnizip.registry import register
from omnizip.types import KeepPlan, TokenLayout


def _random_subset(n: int, k: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """``[n]`` bool mask on ``device`` with ``k`` random True entries.

    The permutation is drawn on the CPU generator (the same plan on every device for a seed) and
    moved to ``device``.
    """
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    if k > 0:
        mask[torch.randperm(n, generator=gen, device="cpu")[:k].to(device)] = True
    return mask


class RandomCompressor(StatelessCompressor):
    """Random pruning at OmniZip's nominal budget (stateless, seeded).

    Args:
        config: ``rho_audio``, ``rho_video``, ``anchor_ratio``, ``g`` set the budget, ``seed`` the
            draws; ``mode="streaming"`` makes every chunk its own audio budget.
    """

    name = "random"

    def plan(self, layout: TokenLayout) -> KeepPlan:
        """Drop random audio and video tokens down to the nominal budget."""
        cfg = self.config
        index = index_layout(layout)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + round(layout.t0_s * 1000))
        na = int(index.audio_idx.numel())
        dev = layout.embeds.device
        if self.streaming:
            parts = [_random_subset(n, nominal_audio_keep(n, cfg.rho_audio, cfg.anchor_ratio, cfg.g), gen, dev)
                     for n in index.audio_counts]
            audio_keep = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool, device=dev)
        else:
            audio_keep = _random_subset(na, nominal_audio_keep(na, cfg.rho_audio, cfg.anchor_ratio, cfg.g), gen, dev)
        per_frame = frame_keep_count(index.tokens_per_frame, cfg.rho_video)
        video_keep = torch.zeros(int(index.video_idx.numel()), dtype=torch.bool, device=dev)
        for c, (v0, nv) in enumerate(zip(video_starts(index), index.video_counts, strict=True)):
            video_keep[v0 : v0 + nv] = _random_subset(nv, per_frame * index.frame_counts[c], gen, dev)
        return build_plan(layout, index, audio_keep=audio_keep, video_keep=video_keep)


@register("random")
def make_random(config: OmniZipConfig) -> Compressor:
    """Build the seeded random baseline."""
    return RandomCompressor(config)
