"""``dycoke``: DyCoke-style temporal token merging on video *and* audio (the paper's "DyCoke (V&A)").

DyCoke's first stage (TTM, ``KD-TAO/DyCoke``) walks the frames in groups of four: frame 0 is the
group's reference and is kept whole, frames 1 and 3 are compared with the frame before them and
frame 2 with frame 0, token by token at the same spatial position; the most similar (redundant)
tokens are dropped. Here every token gets a redundancy score and each budget keeps its least
redundant tokens:

* frame position ``j = f mod 4`` inside its sequence; ``j = 1, 3``: cosine with the same token of
  frame ``f - 1``; ``j = 2``: with frame ``f - 2``;
* ``j = 0`` (reference frames) score ``-2 + cos`` with the next frame (or with the frame's mean token
  when there is no next frame), so they are always kept before any other token, and only pruned,
  least-changing first, when the budget cannot hold them whole (e.g. 2-frame windows at 40 %).

Video budget: ``floor(P (1 - rho_video))`` per frame, summed and selected per chunk (OmniZip's
nominal video budget). Audio: consecutive audio tokens are treated as frames of one token each and
pruned the same way down to OmniZip's nominal audio budget (salient + anchors). Sequences are the
whole layout in offline mode and each chunk in streaming mode (stateless, one window at a time).
Ties go to the earlier token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omnizip.audio import nominal_audio_keep, top_indices
from omnizip.budget import frame_keep_count
from omnizip.compressor import Compressor, StatelessCompressor
from omnizip.config import OmniZipConfig
from omnizip.methods._layout import build_plan, index_layout
from omnizip.methods._stages import video_starts
from omnizip.registry import register
from omnizip.types import KeepPlan, TokenLayout

_FRAME_BATCH = 32


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of ``[B, P, D]`` tensors (float32), as DyCoke computes it."""
    return F.cosine_similarity(
        F.normalize(a.to(torch.float32), p=2, dim=-1), F.normalize(b.to(torch.float32), p=2, dim=-1), dim=-1
    )


def ttm_redundancy(embeds: torch.Tensor, rows: torch.Tensor, p: int, seq_pos: torch.Tensor,
                   seq_len: torch.Tensor) -> torch.Tensor:
    """TTM redundancy of every token (lower = keep first).

    Args:
        embeds: ``[N, D]`` embeddings; not modified.
        rows: ``[F * P]`` int64 rows of the frames' tokens, frame after frame.
        p: tokens per frame.
        seq_pos: ``[F]`` int64 position of each frame inside its sequence.
        seq_len: ``[F]`` int64 length (in frames) of each frame's sequence.

    Returns:
        ``[F * P]`` float32 redundancy.
    """
    f = int(seq_pos.numel())
    dev = embeds.device
    grid = rows.view(f, p)
    j = seq_pos % 4
    frame = torch.arange(f, dtype=torch.int64, device=dev)
    partner = torch.where(j == 2, frame - 2, frame - 1)
    has_next = (seq_pos + 1) < seq_len
    partner = torch.where(j == 0, torch.where(has_next, frame + 1, torch.full_like(frame, -1)), partner)
    out = torch.empty(f, p, dtype=torch.float32, device=dev)
    for start in range(0, f, _FRAME_BATCH):
        fs = frame[start : start + _FRAME_BATCH]
        x = embeds[grid[fs]]
        part = partner[fs]
        y = embeds[grid[part.clamp(min=0)]]
        # A frame without a partner is compared with its mean token (torch.where: no host sync).
        lone = (part < 0).view(-1, 1, 1)
        y = torch.where(lone, x.to(torch.float32).mean(dim=1, keepdim=True).to(y.dtype).expand_as(y), y)
        red = _cos(x, y)
        out[fs] = torch.where((j[fs] == 0).unsqueeze(1), red - 2.0, red)
    return out.view(-1)


def _keep_least(redundancy: torch.Tensor, k: int) -> torch.Tensor:
    """``[n]`` bool mask of the ``k`` least redundant entries (ties: earlier first)."""
    mask = torch.zeros(int(redundancy.numel()), dtype=torch.bool, device=redundancy.device)
    mask[top_indices(-redundancy, k)] = True
    return mask


class DyCokeCompressor(StatelessCompressor):
    """DyCoke-style TTM on both modalities at OmniZip's nominal budget (stateless).

    Args:
        config: ``rho_audio``, ``anchor_ratio``, ``g`` (audio budget), ``rho_video`` (video budget);
            ``mode="streaming"`` makes every chunk its own sequence and budget.
    """

    name = "dycoke"

    def plan(self, layout: TokenLayout) -> KeepPlan:
        """Drop the most temporally redundant audio and video tokens down to the budget."""
        cfg = self.config
        index = index_layout(layout)
        # Audio: one token per "frame".
        na = int(index.audio_idx.numel())
        dev = layout.embeds.device
        audio_keep = torch.zeros(na, dtype=torch.bool, device=dev)
        if na:
            if self.streaming:
                starts = torch.tensor(index.audio_starts, dtype=torch.int64, device=dev)[index.audio_chunk]
                pos = torch.arange(na, dtype=torch.int64, device=dev) - starts
                length = torch.tensor(index.audio_counts, dtype=torch.int64, device=dev)[index.audio_chunk]
            else:
                pos = torch.arange(na, dtype=torch.int64, device=dev)
                length = torch.full((na,), na, dtype=torch.int64, device=dev)
            red = ttm_redundancy(layout.embeds, index.audio_idx, 1, pos, length)
            if self.streaming:
                for a0, n in zip(index.audio_starts, index.audio_counts, strict=True):
                    k = nominal_audio_keep(n, cfg.rho_audio, cfg.anchor_ratio, cfg.g)
                    audio_keep[a0 : a0 + n] = _keep_least(red[a0 : a0 + n], k)
            else:
                audio_keep = _keep_least(red, nominal_audio_keep(na, cfg.rho_audio, cfg.anchor_ratio, cfg.g))
        # Video: frames in groups of four.
        video_keep = None
        nf = index.num_frames
        if nf:
            if self.streaming:
                counts = torch.tensor(index.frame_counts, dtype=torch.int64, device=dev)
                pos, length = index.frame_pos, counts[index.frame_chunk]
            else:
                pos = torch.arange(nf, dtype=torch.int64, device=dev)
                length = torch.full((nf,), nf, dtype=torch.int64, device=dev)
            red = ttm_redundancy(layout.embeds, index.video_idx, index.tokens_per_frame, pos, length)
            per_frame = frame_keep_count(index.tokens_per_frame, cfg.rho_video)
            video_keep = torch.zeros(int(index.video_idx.numel()), dtype=torch.bool, device=dev)
            for c, (v0, nv) in enumerate(zip(video_starts(index), index.video_counts, strict=True)):
                video_keep[v0 : v0 + nv] = _keep_least(red[v0 : v0 + nv], per_frame * index.frame_counts[c])
        return build_plan(layout, index, audio_keep=audio_keep, video_keep=video_keep)


@register("dycoke")
def make_dycoke(config: OmniZipConfig) -> Compressor:
    """Build the DyCoke (V&A) baseline."""
    return DyCokeCompressor(config)
