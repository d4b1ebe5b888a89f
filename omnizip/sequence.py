"""Reference-compatible entry point: compress a whole Qwen2.5-Omni input sequence.

:func:`layout_from_ids` turns ``input_ids`` into a :class:`~omnizip.types.TokenLayout` the way the
v2 reference reads them: windows are the maximal contiguous runs of audio ids and of video ids, run
``i`` of video pairs with run ``i`` of audio (chunk ``i``), and frames are the temporal grid steps of
``video_grid_thw`` (``P = (h / 2) (w / 2)`` tokens each). :func:`compress_sequence` runs OmniZip (or
another registered method) on it and returns the reference's outputs.
"""

from __future__ import annotations

import torch

from omnizip.config import OmniZipConfig
from omnizip.plan import apply_plan
from omnizip.registry import make_compressor
from omnizip.types import Modality, TokenLayout


def _run_ids(mask: torch.Tensor) -> torch.Tensor:
    """``[L]`` run index (0, 1, ...) of each True entry of ``mask`` among its maximal runs, -1 elsewhere.

    Full length and free of data-dependent sizes (no host sync on a GPU).
    """
    starts = mask.clone()
    starts[1:] &= ~mask[:-1]
    return torch.where(mask, torch.cumsum(starts.to(torch.int64), 0) - 1, -1)


def layout_from_ids(
    input_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    audio_saliency: torch.Tensor | None,
    *,
    audio_token_id: int,
    video_token_id: int,
    video_grid_thw: torch.Tensor | None,
) -> TokenLayout:
    """Build the layout of one sequence from its token ids.

    Args:
        input_embeds: ``[L, D]`` embeddings with the audio/video features scattered in.
        input_ids: ``[L]`` int token ids.
        audio_saliency: ``[N_audio]`` pooled saliency, or ``None``.
        audio_token_id: id of the audio placeholder token.
        video_token_id: id of the video placeholder token.
        video_grid_thw: ``[1, 3]`` (or ``[3]``) int ``(t, h, w)`` patch grid of the video; may be
            ``None`` when there are no video tokens.

    Returns:
        The :class:`TokenLayout` (``positions=None``).

    Raises:
        ValueError: on mismatched shapes, a missing grid, or video runs that are not whole frames.
    """
    if input_embeds.dim() != 2:
        raise ValueError(f"input_embeds must be [L, D], got shape {tuple(input_embeds.shape)}")
    if input_ids.dim() != 1 or input_ids.shape[0] != input_embeds.shape[0]:
        raise ValueError(f"input_ids must be [L] with L={input_embeds.shape[0]}, got {tuple(input_ids.shape)}")
    if audio_token_id == video_token_id:
        raise ValueError("audio_token_id and video_token_id must differ")
    n = int(input_ids.shape[0])
    dev = input_embeds.device
    input_ids = input_ids.to(dev)  # the layout lives on the embeddings' device (omnizip.device)
    is_audio = input_ids == audio_token_id
    is_video = input_ids == video_token_id
    text = torch.full((n,), int(Modality.TEXT), dtype=torch.int64, device=dev)
    modality = torch.where(is_audio, int(Modality.AUDIO), torch.where(is_video, int(Modality.VIDEO), text))
    chunk_id = torch.where(is_audio, _run_ids(is_audio), _run_ids(is_video))
    frame_id = torch.full((n,), -1, dtype=torch.int64, device=dev)
    na, nv = torch.stack([is_audio.sum(), is_video.sum()]).tolist()
    if nv:
        if video_grid_thw is None:
            raise ValueError("video_grid_thw is required when the sequence has video tokens")
        grid = torch.as_tensor(video_grid_thw, device="cpu").reshape(-1)  # host metadata
        if grid.numel() != 3:
            raise ValueError(f"video_grid_thw must be [1, 3] (t, h, w), got shape {tuple(grid.shape)}")
        t, h, w = (int(x) for x in grid.tolist())
        p = (h // 2) * (w // 2)
        if p <= 0 or t * p != nv:
            raise ValueError(f"video_grid_thw {(t, h, w)} gives {t} x {p} tokens but the sequence has {nv} video tokens")
        # Runs hold whole frames iff every run starts at a multiple of p (the frames tile the video).
        order = torch.cumsum(is_video.to(torch.int64), 0) - 1  # rank among the video tokens
        run_start = is_video.clone()
        run_start[1:] &= ~is_video[:-1]
        if bool(((order % p != 0) & run_start).any()):
            raise ValueError(f"every contiguous run of video tokens must hold whole frames of {p} tokens")
        frame_id = torch.where(is_video, order // p, frame_id)
    if audio_saliency is not None:
        audio_saliency = audio_saliency.reshape(-1).to(dev)
        if audio_saliency.numel() != na:
            raise ValueError(f"audio_saliency has {audio_saliency.numel()} values for {na} audio tokens")
    return TokenLayout(
        embeds=input_embeds,
        modality=modality,
        chunk_id=chunk_id,
        frame_id=frame_id,
        audio_saliency=audio_saliency,
    )


def compress_sequence(
    input_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    audio_saliency: torch.Tensor | None,
    *,
    audio_token_id: int,
    video_token_id: int,
    video_grid_thw: torch.Tensor | None,
    config: OmniZipConfig,
    method: str = "omnizip",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress one input sequence; reference-compatible outputs (spec Stage E).

    With ``config.mode="offline"`` this is the v2 reference on the whole sequence; with
    ``"streaming"`` a fresh streaming compressor processes the chunks in order, each seeing only
    itself and the past. Neither input is modified.

    Args:
        input_embeds: ``[L, D]`` embeddings after the audio/video features were scattered in.
        input_ids: ``[L]`` token ids.
        audio_saliency: ``[N_audio]`` pooled audio saliency (:func:`omnizip.saliency.pool_saliency`),
            or ``None``.
        audio_token_id: id of the audio placeholder token.
        video_token_id: id of the video placeholder token.
        video_grid_thw: ``[1, 3]`` int ``(t, h, w)`` of the video (``None`` without video).
        config: hyper-parameters and mode.
        method: registered compressor name (default ``omnizip``).

    Returns:
        ``(embeds_out [L, D], keep_mask [L] bool)``: ``embeds_out`` is full length with the merged
        anchors (dropped rows untouched), same dtype; the caller takes ``embeds_out[keep_mask]``.
    """
    layout = layout_from_ids(
        input_embeds,
        input_ids,
        audio_saliency,
        audio_token_id=audio_token_id,
        video_token_id=video_token_id,
        video_grid_thw=video_grid_thw,
    )
    compressor = make_compressor(method, config)
    plan = compressor.plan(layout)
    return apply_plan(input_embeds, plan), plan.keep
