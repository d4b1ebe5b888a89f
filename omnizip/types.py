"""Core data types shared by the compressors, the adapters and the streaming engine.

Everything here is a frozen dataclass of tensors: a *layout* of tokens goes into a compressor, a
*plan* comes out, and :func:`omnizip.plan.apply_plan` turns the two into kept embeddings. Nothing in
this module touches a model.

Conventions (see ``docs``/architecture): ``ratio`` always means the fraction *removed*; ``N`` is the
number of tokens in the layout, ``D`` the LLM embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import torch


class Modality(IntEnum):
    """Integer code of a token's modality, stored in :attr:`TokenLayout.modality`."""

    TEXT = 0  # text and special tokens: never dropped
    AUDIO = 1
    VIDEO = 2


@dataclass(frozen=True)
class TokenLayout:
    """The tokens a compressor sees: one clip (offline) or one streaming window.

    Attributes:
        embeds: ``[N, D]`` LLM input embeddings after audio/video features were scattered in.
        modality: ``[N]`` int64, a :class:`Modality` code per token.
        chunk_id: ``[N]`` int64, index of the audio/video interleave chunk (2 s for Qwen2.5-Omni) the
            token belongs to, counted from 0 inside this layout; ``-1`` for text tokens. A chunk is the
            "window" of the OmniZip paper (its audio run paired with its video run).
        frame_id: ``[N]`` int64, index of the video frame (one temporal grid step, ``P`` tokens) the
            token belongs to, counted from 0 inside this layout; ``-1`` for non-video tokens. The
            tokens of a frame are contiguous and in raster (row, col) order.
        audio_saliency: ``[N_audio]`` float, importance of each audio token (mean attention received in
            the last audio-encoder layer, pooled to LLM resolution), in audio-token order; ``None`` when
            the model gave none (then compressors fall back to their no-saliency rule).
        positions: ``[3, N]`` int64 TMRoPE ids computed on the full (unpruned) layout, or ``None``.
            Compressors never change them; kept tokens keep their ids.
        t0_s: start time of the layout in stream seconds (0 for an offline clip).
    """

    embeds: torch.Tensor
    modality: torch.Tensor
    chunk_id: torch.Tensor
    frame_id: torch.Tensor
    audio_saliency: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    t0_s: float = 0.0

    def __post_init__(self) -> None:
        n = self.embeds.shape[0]
        if self.embeds.dim() != 2:
            raise ValueError(f"embeds must be [N, D], got shape {tuple(self.embeds.shape)}")
        for name in ("modality", "chunk_id", "frame_id", "audio_saliency", "positions"):
            t = getattr(self, name)
            if t is not None and t.device != self.embeds.device:
                raise ValueError(
                    f"{name} is on {t.device} but embeds on {self.embeds.device}: a layout lives on one "
                    "device (see omnizip.device)"
                )
        for name in ("modality", "chunk_id", "frame_id"):
            t = getattr(self, name)
            if t.shape != (n,):
                raise ValueError(f"{name} must have shape [{n}], got {tuple(t.shape)}")
        if self.positions is not None and self.positions.shape != (3, n):
            raise ValueError(f"positions must be [3, {n}], got {tuple(self.positions.shape)}")
        if self.audio_saliency is not None:
            n_audio = int((self.modality == Modality.AUDIO).sum())
            if self.audio_saliency.shape != (n_audio,):
                raise ValueError(
                    f"audio_saliency must have one score per audio token ({n_audio}), "
                    f"got shape {tuple(self.audio_saliency.shape)}"
                )

    def to(self, device: torch.device | str) -> TokenLayout:
        """The same layout with every tensor on ``device`` (a layout lives on one device)."""
        sal, pos = self.audio_saliency, self.positions
        return TokenLayout(
            embeds=self.embeds.to(device),
            modality=self.modality.to(device),
            chunk_id=self.chunk_id.to(device),
            frame_id=self.frame_id.to(device),
            audio_saliency=None if sal is None else sal.to(device),
            positions=None if pos is None else pos.to(device),
            t0_s=self.t0_s,
        )

    @property
    def num_tokens(self) -> int:
        """``N``, the number of tokens in the layout."""
        return int(self.embeds.shape[0])

    @property
    def num_chunks(self) -> int:
        """Number of interleave chunks (windows) present in the layout."""
        return max(0, int(self.chunk_id.max()) + 1) if self.num_tokens else 0


@dataclass(frozen=True)
class KeepPlan:
    """What a compressor decided, in ToMe's plan-then-apply style.

    Attributes:
        keep: ``[N]`` bool, True for tokens that stay in the sequence.
        merge_dst: ``[M]`` int64 indices (into the layout) of kept tokens that absorb others (anchors).
        merge_src: ``[M]`` int64 indices of the tokens merged into ``merge_dst`` (dropped tokens).
        merge_weight: ``[M]`` float weights of each source inside its anchor's softmax (they sum to 1
            per anchor); the anchor becomes ``(x_a + sum_m w_m x_m) / (1 + sum_m w_m)``.
        chunk_video_ratio: ``[C]`` float, the video pruning ratio applied to each chunk (fraction
            removed, NaN for a chunk without video).
        chunk_audio_retention: ``[C]`` float, the audio retention score ``S_w`` of each chunk (kept
            audio / audio in the chunk, anchors count as kept; NaN for a chunk without audio).
        stats: free-form counters for reports (kept per modality and so on); never used for control.
    """

    keep: torch.Tensor
    merge_dst: torch.Tensor
    merge_src: torch.Tensor
    merge_weight: torch.Tensor
    chunk_video_ratio: torch.Tensor
    chunk_audio_retention: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.keep.dtype != torch.bool or self.keep.dim() != 1:
            raise ValueError("keep must be a 1-D bool tensor")
        m = self.merge_dst.shape
        if self.merge_src.shape != m or self.merge_weight.shape != m:
            raise ValueError("merge_dst, merge_src and merge_weight must have the same shape [M]")


def count_kept(layout: TokenLayout, keep: torch.Tensor) -> dict[str, int]:
    """Token accounting of a keep-mask.

    Args:
        layout: the layout the mask refers to.
        keep: ``[N]`` bool.

    Returns:
        ``{"audio_total", "audio_kept", "video_total", "video_kept", "text_total", "text_kept"}``.
    """
    names = ("audio", "video", "text")
    sel = torch.stack([layout.modality == code for code in (Modality.AUDIO, Modality.VIDEO, Modality.TEXT)])
    counts = torch.stack([sel.sum(dim=1), (sel & keep).sum(dim=1)], dim=1).tolist()  # one host sync
    out: dict[str, int] = {}
    for name, (total, kept) in zip(names, counts, strict=True):
        out[f"{name}_total"] = total
        out[f"{name}_kept"] = kept
    return out
