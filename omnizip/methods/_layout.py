"""Shared bookkeeping of the built-in methods: index a layout once, assemble a plan at the end.

Every method needs the same view of a :class:`~omnizip.types.TokenLayout`: where the audio and
video tokens are, which chunk each belongs to, and the video frames as a ``[F, P]`` index grid.
:func:`index_layout` computes it with a handful of vectorised ops and validates the layout's
promises (frames contiguous, of equal size, inside one chunk; chunks in time order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from omnizip.types import KeepPlan, Modality, TokenLayout, count_kept


@dataclass(frozen=True)
class LayoutIndex:
    """Index view of a layout.

    Attributes:
        audio_idx: ``[Na]`` int64 layout indices of the audio tokens, in order.
        video_idx: ``[Nv]`` int64 layout indices of the video tokens, in order.
        audio_chunk: ``[Na]`` int64 chunk id of each audio token (non-decreasing).
        video_chunk: ``[Nv]`` int64 chunk id of each video token (non-decreasing).
        num_chunks: ``C``, one more than the largest chunk id of an audio or video token.
        tokens_per_frame: ``P`` (0 when there is no video).
        frame_chunk: ``[F]`` int64 chunk id of each frame.
        frame_pos: ``[F]`` int64 position of each frame inside its chunk (0, 1, ...).
        audio_counts: audio tokens per chunk (``C`` ints).
        video_counts: video tokens per chunk (``C`` ints).
        frame_counts: frames per chunk (``C`` ints).
        audio_starts: offset of each chunk's first audio token in audio order (``C`` ints).
        frame_starts: index of each chunk's first frame (``C`` ints).
    """

    audio_idx: torch.Tensor
    video_idx: torch.Tensor
    audio_chunk: torch.Tensor
    video_chunk: torch.Tensor
    num_chunks: int
    tokens_per_frame: int
    frame_chunk: torch.Tensor
    frame_pos: torch.Tensor
    audio_counts: list[int]
    video_counts: list[int]
    frame_counts: list[int]
    audio_starts: list[int]
    frame_starts: list[int]

    @property
    def num_frames(self) -> int:
        """``F``, the number of video frames."""
        return int(self.frame_chunk.shape[0])


def _starts(counts: list[int]) -> list[int]:
    out, acc = [], 0
    for c in counts:
        out.append(acc)
        acc += c
    return out


def index_layout(layout: TokenLayout) -> LayoutIndex:
    """Build the :class:`LayoutIndex` of ``layout`` (on the layout's device).

    Host syncs: the two ``nonzero`` calls plus three reads (validation flags with the chunk count and
    the frame size, the frame checks, the per-chunk counts), whatever the layout's size.

    Raises:
        ValueError: if an audio/video token has a negative chunk id, chunk ids decrease along a
            modality, a video token has no frame id, a frame is split, spans two chunks or frames
            differ in size.
    """
    mod = layout.modality
    dev = mod.device
    audio_idx = torch.nonzero(mod == Modality.AUDIO, as_tuple=True)[0]
    video_idx = torch.nonzero(mod == Modality.VIDEO, as_tuple=True)[0]
    audio_chunk = layout.chunk_id[audio_idx].to(torch.int64)
    video_chunk = layout.chunk_id[video_idx].to(torch.int64)
    fid = layout.frame_id[video_idx]
    nv = int(video_idx.numel())
    # Every check and size this function needs from the data, read in one host sync.
    flags = [
        (audio_chunk < 0).any(), (audio_chunk[1:] < audio_chunk[:-1]).any(),
        (video_chunk < 0).any(), (video_chunk[1:] < video_chunk[:-1]).any(),
        (fid < 0).any(), (fid[1:] < fid[:-1]).any(),
    ]
    last = torch.cat([audio_chunk[-1:], video_chunk[-1:]]).amax() if int(audio_idx.numel()) + nv else None
    first_frame = (fid == fid[0]).sum() if nv else None
    extra = [t for t in (last, first_frame) if t is not None]
    host = torch.stack([f.to(torch.int64) for f in flags] + extra).tolist()
    for name, (neg, dec) in (("audio", host[0:2]), ("video", host[2:4])):
        if neg:
            raise ValueError(f"every {name} token needs a chunk_id >= 0")
        if dec:
            raise ValueError(f"chunk_id must not decrease along the {name} tokens (time order)")
    num_chunks = host[6] + 1 if last is not None else 0

    p = 0
    frame_chunk = torch.zeros(0, dtype=torch.int64, device=dev)
    if nv:
        if host[4]:
            raise ValueError("every video token needs a frame_id >= 0")
        if host[5]:
            raise ValueError("the tokens of a video frame must be contiguous and frames in order")
        p = host[-1]
        # Frame ids are non-decreasing, so frames are equal runs of p tokens iff the [F, p] grid is
        # constant along rows and strictly increasing down its first column.
        if nv % p:
            unequal = True
        else:
            g = fid.view(-1, p)
            grid = video_chunk.view(-1, p)
            unequal, split = torch.stack(
                [(g != g[:, :1]).any() | (g[1:, 0] <= g[:-1, 0]).any(), (grid != grid[:, :1]).any()]
            ).tolist()
            if split:
                raise ValueError("a video frame must not span two chunks")
            frame_chunk = grid[:, 0].contiguous()
        if unequal:
            _, sizes = torch.unique_consecutive(fid, return_counts=True)
            raise ValueError(f"all video frames must have the same token count, got {sorted(set(sizes.tolist()))}")

    # Per-chunk counts by scatter-add (no data-dependent size), read in one host sync.
    per_chunk = torch.zeros(3, num_chunks, dtype=torch.int64, device=dev)
    for row, ch in enumerate((audio_chunk, video_chunk, frame_chunk)):
        per_chunk[row].index_add_(0, ch, torch.ones_like(ch))
    audio_counts, video_counts, frame_counts = per_chunk.tolist() if num_chunks else ([], [], [])
    frame_starts = _starts(frame_counts)
    first = (torch.cumsum(per_chunk[2], 0) - per_chunk[2])[frame_chunk]
    frame_pos = torch.arange(int(frame_chunk.numel()), dtype=torch.int64, device=dev) - first
    return LayoutIndex(
        audio_idx=audio_idx,
        video_idx=video_idx,
        audio_chunk=audio_chunk,
        video_chunk=video_chunk,
        num_chunks=num_chunks,
        tokens_per_frame=p,
        frame_chunk=frame_chunk,
        frame_pos=frame_pos,
        audio_counts=audio_counts,
        video_counts=video_counts,
        frame_counts=frame_counts,
        audio_starts=_starts(audio_counts),
        frame_starts=frame_starts,
    )


def empty_merges(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(merge_dst, merge_src, merge_weight)`` with no merge, on ``device``."""
    e = torch.zeros(0, dtype=torch.int64, device=device)
    return e, e.clone(), torch.zeros(0, dtype=torch.float32, device=device)


def build_plan(
    layout: TokenLayout,
    index: LayoutIndex,
    *,
    audio_keep: torch.Tensor | None,
    video_keep: torch.Tensor | None,
    merges: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    chunk_video_ratio: list[float] | None = None,
    chunk_audio_retention: list[float] | None = None,
    stats: dict[str, float] | None = None,
) -> KeepPlan:
    """Assemble a :class:`KeepPlan` from per-modality decisions.

    Args:
        layout: the layout the plan is for.
        index: its :class:`LayoutIndex`.
        audio_keep: ``[Na]`` bool keep-mask in audio order (``None`` keeps every audio token).
        video_keep: ``[Nv]`` bool keep-mask in video order (``None`` keeps every video token).
        merges: ``(dst, src, weight)`` with ``dst``/``src`` as *audio-order* indices, or ``None``.
        chunk_video_ratio: ``C`` video pruning ratios (NaN for chunks without video); defaults to
            the achieved ratios.
        chunk_audio_retention: ``C`` audio retention scores; defaults to the achieved ones.
        stats: extra counters merged into ``plan.stats``.

    Returns:
        The plan; text tokens are always kept.
    """
    dev = layout.embeds.device
    keep = torch.ones(layout.num_tokens, dtype=torch.bool, device=dev)
    if audio_keep is not None and index.audio_idx.numel():
        keep[index.audio_idx] = audio_keep
    if video_keep is not None and index.video_idx.numel():
        keep[index.video_idx] = video_keep
    c = index.num_chunks
    if chunk_audio_retention is None:
        chunk_audio_retention = per_chunk_fraction(keep[index.audio_idx], index.audio_chunk, index.audio_counts)
    if chunk_video_ratio is None:
        kept = per_chunk_fraction(keep[index.video_idx], index.video_chunk, index.video_counts)
        chunk_video_ratio = [1.0 - x if not math.isnan(x) else math.nan for x in kept]
    if merges is None:
        dst, src, w = empty_merges(dev)
    else:
        dst_rel, src_rel, w = merges
        dst, src = index.audio_idx[dst_rel], index.audio_idx[src_rel]
    if len(chunk_video_ratio[:c]) != c or len(chunk_audio_retention[:c]) != c:
        raise ValueError(f"chunk_video_ratio and chunk_audio_retention need one value per chunk ({c})")
    # Both per-chunk vectors reach the device in one copy.
    per_chunk = torch.tensor(
        [*chunk_video_ratio[:c], *chunk_audio_retention[:c]], dtype=torch.float32, device=dev
    ).view(2, c)
    counters: dict[str, float] = {k: float(v) for k, v in count_kept(layout, keep).items()}
    counters["merged"] = float(src.numel())
    if stats:
        counters.update(stats)
    return KeepPlan(
        keep=keep,
        merge_dst=dst,
        merge_src=src,
        merge_weight=w.to(torch.float32),
        chunk_video_ratio=per_chunk[0],
        chunk_audio_retention=per_chunk[1],
        stats=counters,
    )


def per_chunk_fraction(mask: torch.Tensor, chunk: torch.Tensor, counts: list[int]) -> list[float]:
    """Fraction of True per chunk, computed in float32 like the reference (``NaN`` for empty chunks).

    Args:
        mask: ``[n]`` bool, one entry per token of one modality.
        chunk: ``[n]`` int64 chunk id of each token.
        counts: tokens per chunk (``C`` ints).

    Returns:
        ``C`` Python floats (float32 values ``kept / total``).
    """
    if not counts:
        return []
    kept = torch.zeros(len(counts), dtype=torch.float32, device=chunk.device).index_add_(
        0, chunk, mask.to(torch.float32)
    )
    total = torch.tensor(counts, dtype=torch.float32, device=chunk.device)
    frac = kept / total
    return [math.nan if n == 0 else float(x) for x, n in zip(frac.tolist(), counts, strict=True)]
