"""Listen before you look: the audio budget of a window decides what its vision encoder sees.

Streaming OmniZip decides a window's video keep count ``k`` from its audio alone (the audio
retention score through :class:`~omnizip.budget.StreamingBudgetController`), yet plain OmniZip
prunes only after the vision tower has encoded every patch. With ``vision_budget="audio"`` the
window's audio is encoded first, ``k`` is decided, and the vision tower is given only a grid that
can still hold ``ceil(headroom * k)`` LLM tokens, the cheapest of:

* **temporal**: ``T' < T`` grid steps. The frames to drop are the most static ones: repeatedly the
  frame whose pixel change to its previous kept frame is the smallest (a cheap mean absolute
  difference on a strided grey copy of the decoded frames, like the pixel-MSE frame filters of
  serving engines) is skipped, so a pair of near-identical frames collapses to one. The kept
  ``T' * temporal_patch_size`` frames are encoded as a clip sampled at
  ``fps * F' / F``: each grid step then spans ``window_s / T'`` seconds and the TMRoPE temporal ids
  are the stock ``get_rope_index`` ids of that grid (``first_grid`` in those units, which requires
  the window to start on a multiple of the step; otherwise no temporal reduction).
* **spatial**: a smaller pixel budget (``min_pixels = max_pixels``), the smallest area of
  ``tokens * factor**2`` whose ``smart_resize`` grid holds the needed tokens, never below
  ``MIN_AREA_FRACTION`` of the full frame area.

The pixel score only chooses *which* frames go; *how many* tokens are needed comes from the audio.
ISTC then prunes the encoded tokens down to exactly ``k``; the controller accounts the window with
its full-grid token count, so the budget is the same fraction of the same nominal tokens as plain
OmniZip and its guarantee (any ``controller_horizon`` windows within ``controller_tolerance``)
carries over.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from omnizip.preprocess import VisionPreprocessConfig

VisionBudgetMode = Literal["off", "audio"]
VisionBudgetAxes = Literal["temporal", "spatial", "both"]

MIN_AREA_FRACTION = 0.25
"""Smallest frame area (fraction of the full one) the spatial axis goes down to."""

_SCORE_STRIDE = 8  # pixel stride of the change score: a 448x448 frame is scored on 56x56 grey pixels


@dataclass(frozen=True)
class VisionBudgetInput:
    """What the adapter knows about a window between its audio and its vision tower calls.

    Attributes:
        frames: ``[F, H, W, 3]`` uint8 decoded frames on the model's frame grid.
        grid_thw: ``(T, gh, gw)`` the stock grid of the frames, in patches.
        vision_cfg: the family's frame preprocessing (pixel budget, factor, temporal patch).
        audio_saliency: ``[N_a]`` saliency of the window's LLM audio tokens, or None.
        n_audio: ``N_a``, the window's LLM audio tokens.
        first_grid: temporal grid steps of the stream before this window (the cursor's).
    """

    frames: np.ndarray
    grid_thw: tuple[int, int, int]
    vision_cfg: VisionPreprocessConfig
    audio_saliency: torch.Tensor | None
    n_audio: int
    first_grid: int

    @property
    def nominal_tokens(self) -> int:
        """LLM video tokens of the full grid: ``T * gh * gw / merge**2``."""
        t, h, w = self.grid_thw
        return t * h * w // self.vision_cfg.merge_size**2


@dataclass(frozen=True)
class VisionPlan:
    """The grid a window's vision tower encodes.

    Attributes:
        frame_index: indices of the frames to encode (ascending), ``T' * temporal_patch_size`` of them.
        min_pixels: pixel budget of the resize (``max_pixels`` is the same), None for the stock size.
        fps_scale: ``F' / F``: the encoded clip's frame rate over the model's (stretches each step).
        grid_thw: ``(T', gh', gw')`` the grid encoded.
        first_grid: the window's first grid step in units of the encoded steps.
        nominal_tokens: LLM video tokens of the full grid (what the budget is a fraction of).
        keep_tokens: the video keep count the controller gave the window.
        retention: the window's audio retention score the count came from (None without audio).
    """

    frame_index: tuple[int, ...]
    min_pixels: int | None
    fps_scale: float
    grid_thw: tuple[int, int, int]
    first_grid: int
    nominal_tokens: int
    keep_tokens: int
    retention: float | None

    @property
    def patches(self) -> int:
        """Vision-tower patches encoded: ``T' * gh' * gw'``."""
        t, h, w = self.grid_thw
        return t * h * w


VisionPlanner = Callable[[VisionBudgetInput], VisionPlan]
"""The hook of :class:`~omnizip.adapters.encoding.EncodeRequest`: called after the audio tower."""


def frame_change_scores(frames: np.ndarray, stride: int = _SCORE_STRIDE) -> np.ndarray:
    """Pixel change of each frame to the previous one: mean absolute grey difference in ``[0, 255]``.

    Args:
        frames: ``[F, H, W, 3]`` uint8.
        stride: spatial subsampling of the score (cost ``F * H * W / stride**2``).

    Returns:
        ``[F, F]`` float64 matrix ``D[i, j]`` of the change between frames ``i`` and ``j`` (symmetric).
    """
    grey = frames[:, ::stride, ::stride, :].astype(np.float32).mean(axis=-1)  # [F, h, w]
    flat = grey.reshape(grey.shape[0], -1)
    return np.abs(flat[:, None, :] - flat[None, :, :]).mean(axis=-1).astype(np.float64)


def drop_static_frames(change: np.ndarray, keep: int) -> list[int]:
    """Keep ``keep`` frames by skipping, one at a time, the frame that changes least from its kept predecessor.

    Frame 0 always stays (it anchors the window's first grid step at the window's start). Ties drop
    the later frame.

    Args:
        change: ``[F, F]`` pairwise change scores (:func:`frame_change_scores`).
        keep: frames to keep, ``1 <= keep <= F``.

    Returns:
        The kept frame indices, ascending.
    """
    kept = list(range(change.shape[0]))
    while len(kept) > max(1, keep):
        scores = [change[kept[i - 1], kept[i]] for i in range(1, len(kept))]
        drop = min(range(len(scores)), key=lambda i: (scores[i], -i))
        del kept[drop + 1]
    return kept


def _spatial_option(
    height: int, width: int, cfg: VisionPreprocessConfig, tokens_per_step: int, full_pixels: int
) -> tuple[int, tuple[int, int]] | None:
    """Smallest pixel budget whose resize gives at least ``tokens_per_step`` LLM tokens per grid step."""
    factor = cfg.factor
    floor_tokens = max(1, math.ceil(MIN_AREA_FRACTION * full_pixels / factor**2))
    tokens = max(tokens_per_step, floor_tokens)
    while tokens * factor**2 <= full_pixels:
        pixels = tokens * factor**2
        h, w = dataclasses.replace(cfg, min_pixels=pixels, max_pixels=pixels).resized_size(height, width)
        if (h // factor) * (w // factor) >= tokens_per_step:
            return pixels, (h // cfg.patch_size, w // cfg.patch_size)
        tokens += 1
    return None


def choose_vision_plan(
    inp: VisionBudgetInput,
    keep_tokens: int,
    *,
    axes: VisionBudgetAxes = "both",
    headroom: float = 1.25,
    retention: float | None = None,
) -> VisionPlan:
    """The cheapest grid (fewest patches) that still holds ``ceil(headroom * keep_tokens)`` LLM tokens.

    Args:
        inp: the window (frames, full grid, preprocessing).
        keep_tokens: the controller's video keep count for the window (of ``inp.nominal_tokens``).
        axes: which reductions are allowed.
        headroom: encoded tokens per kept token at least (ISTC's choice); ``>= 1``.
        retention: the audio retention score behind ``keep_tokens`` (recorded only).

    Returns:
        The plan; the full grid when nothing cheaper fits (ties keep the higher resolution).
    """
    cfg = inp.vision_cfg
    t_full, gh, gw = inp.grid_thw
    n_frames, height, width = int(inp.frames.shape[0]), int(inp.frames.shape[1]), int(inp.frames.shape[2])
    tp, m = cfg.temporal_patch_size, cfg.merge_size
    full_tokens_per_step = gh * gw // m**2
    need = min(inp.nominal_tokens, max(1, math.ceil(headroom * keep_tokens)))
    full_pixels = gh * gw * cfg.patch_size**2
    steps = [t_full]
    if axes in ("temporal", "both") and n_frames == t_full * tp:
        steps = [t for t in range(1, t_full + 1) if (inp.first_grid * t) % t_full == 0]
    best: tuple[tuple[int, int, int], int | None, tuple[int, int]] | None = None
    for t in steps:
        per_step = math.ceil(need / t)
        if per_step > full_tokens_per_step:
            continue
        pixels: int | None = None
        h, w = gh, gw
        if axes in ("spatial", "both") and per_step < full_tokens_per_step:
            option = _spatial_option(height, width, cfg, per_step, full_pixels)
            if option is not None:
                pixels, (h, w) = option
        key = (t * h * w, -(h * w), -t)  # fewest patches, then the higher resolution, then more steps
        if best is None or key < best[0]:
            best = (key, pixels, (h, w))
    assert best is not None  # t = t_full always fits: need <= nominal tokens
    t_new, pixels, (h, w) = -best[0][2], best[1], best[2]
    if t_new < t_full:
        index = tuple(drop_static_frames(frame_change_scores(inp.frames), t_new * tp))
    else:
        index = tuple(range(n_frames))
    return VisionPlan(
        frame_index=index, min_pixels=pixels, fps_scale=len(index) / n_frames, grid_thw=(t_new, h, w),
        first_grid=inp.first_grid * t_new // t_full, nominal_tokens=inp.nominal_tokens,
        keep_tokens=int(keep_tokens), retention=retention,
    )


def plan_frames(inp: VisionBudgetInput, plan: VisionPlan) -> tuple[np.ndarray, VisionPreprocessConfig]:
    """The frames and the preprocessing config the vision tower gets under ``plan``.

    Returns:
        ``([F', H, W, 3] uint8 frames, the config with the plan's pixel budget)``.
    """
    frames = inp.frames[list(plan.frame_index)]
    cfg = inp.vision_cfg
    if plan.min_pixels is not None:
        cfg = dataclasses.replace(cfg, min_pixels=plan.min_pixels, max_pixels=plan.min_pixels)
    return frames, cfg
