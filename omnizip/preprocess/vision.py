"""Video preprocessing for Qwen2.5-Omni / Qwen3-Omni without torchvision.

``smart_resize`` -> PIL resize -> rescale/normalise -> patchify in the ViT's merge order. The output is
bit-identical to transformers' ``Qwen2VLImageProcessorPil`` applied to the same frames (the video
processor itself needs torchvision, whose wheel cannot load beside the CPU torch used here).

Pure functions of arrays: no file I/O, nothing happens on import.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

Family = Literal["qwen2_5_omni", "qwen3_omni"]
FAMILIES: tuple[Family, ...] = ("qwen2_5_omni", "qwen3_omni")

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_family(family: str) -> Family:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return family  # type: ignore[return-value]


def smart_resize(height: int, width: int, *, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Target frame size of the Qwen-VL processors (same rounding as transformers' ``smart_resize``).

    Both sides become multiples of ``factor``; the area is brought inside ``[min_pixels, max_pixels]``
    while keeping the aspect ratio as closely as the rounding allows.

    Args:
        height: source height in pixels (>= 1).
        width: source width in pixels (>= 1).
        factor: ``patch_size * merge_size`` (28 for Qwen2.5-Omni, 32 for Qwen3-Omni).
        min_pixels: lower bound of the resized area in pixels.
        max_pixels: upper bound of the resized area in pixels.

    Returns:
        ``(resized_height, resized_width)`` in pixels.

    Raises:
        ValueError: non-positive sizes, or an aspect ratio above 200 (as transformers).
    """
    if height < 1 or width < 1 or factor < 1:
        raise ValueError(f"height, width and factor must be >= 1, got {height}, {width}, {factor}")
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels})")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be at most 200, got {max(height, width) / min(height, width):.1f}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class VisionPreprocessConfig:
    """Frame preprocessing of one model family (values of the checkpoints' processors).

    Build with :meth:`for_family` (or :meth:`qwen2_5_omni` / :meth:`qwen3_omni`) and override fields
    by keyword. The default pixel budget ``min_pixels = max_pixels = 128 * factor**2`` gives 128
    LLM tokens per temporal grid, the OmniZip paper's video setting (``128*28*28`` for Qwen2.5-Omni).

    Attributes:
        family: ``"qwen2_5_omni"`` or ``"qwen3_omni"``.
        patch_size: ViT patch side in pixels (14 / 16).
        temporal_patch_size: frames per temporal patch ("grid"), 2 for both families.
        merge_size: side of the spatial patch merge, 2 for both families.
        image_mean: per-channel RGB mean subtracted after rescaling to ``[0, 1]``.
        image_std: per-channel RGB std divided by.
        min_pixels: lower bound of the resized frame area.
        max_pixels: upper bound of the resized frame area.
        fps: frame sampling rate in frames per second (2.0, as qwen-omni-utils samples).
        resample: PIL resampling filter (``Image.Resampling.BICUBIC``, as the processors).
        rescale_factor: multiplier that maps uint8 to ``[0, 1]``.
    """

    family: Family
    patch_size: int
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = _CLIP_MEAN
    image_std: tuple[float, float, float] = _CLIP_STD
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 128 * 28 * 28
    fps: float = 2.0
    resample: int = int(Image.Resampling.BICUBIC)
    rescale_factor: float = 1 / 255

    def __post_init__(self) -> None:
        _check_family(self.family)
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) must not exceed max_pixels ({self.max_pixels})")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError("image_mean and image_std must have 3 entries and std must be positive")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")

    @classmethod
    def for_family(cls, family: str, **overrides: Any) -> VisionPreprocessConfig:
        """Config of a family with optional field overrides (e.g. ``max_pixels=448*448``)."""
        family = _check_family(family)
        if family == "qwen2_5_omni":
            base = cls(family="qwen2_5_omni", patch_size=14)
        else:
            budget = 128 * 32 * 32
            base = cls(family="qwen3_omni", patch_size=16, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
                       min_pixels=budget, max_pixels=budget)
        return replace(base, **overrides) if overrides else base

    @classmethod
    def qwen2_5_omni(cls, **overrides: Any) -> VisionPreprocessConfig:
        """Qwen2.5-Omni: patch 14, CLIP mean/std, 128*28*28 pixels per frame, 2 fps."""
        return cls.for_family("qwen2_5_omni", **overrides)

    @classmethod
    def qwen3_omni(cls, **overrides: Any) -> VisionPreprocessConfig:
        """Qwen3-Omni: patch 16, mean/std 0.5, 128*32*32 pixels per frame, 2 fps."""
        return cls.for_family("qwen3_omni", **overrides)

    @property
    def factor(self) -> int:
        """Side in pixels of one merged LLM token: ``patch_size * merge_size``."""
        return self.patch_size * self.merge_size

    @property
    def second_per_grid(self) -> float:
        """Seconds covered by one temporal grid (``video_second_per_grid``): ``temporal_patch_size / fps``."""
        return self.temporal_patch_size / self.fps

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``smart_resize`` of a ``height x width`` frame under this config's pixel budget."""
        return smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels,
                            max_pixels=self.max_pixels)


def _as_frames(frames: np.ndarray | torch.Tensor, name: str = "frames") -> np.ndarray:
    arr = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or 0 in arr.shape:
        raise ValueError(f"{name} must be a non-empty uint8 array [F, H, W, 3] (RGB), got {arr.dtype} "
                         f"{tuple(arr.shape)}")
    return arr


def resize_frames(frames: np.ndarray | torch.Tensor, cfg: VisionPreprocessConfig) -> np.ndarray:
    """Resize RGB frames to the config's ``smart_resize`` size with PIL, as the PIL image processor does.

    Args:
        frames: ``uint8 [F, H, W, 3]`` RGB frames (numpy or a CPU torch tensor).
        cfg: the family's preprocessing config.

    Returns:
        ``uint8 [F, h, w, 3]`` with ``h, w`` multiples of ``cfg.factor``; a new array.
    """
    arr = _as_frames(frames)
    h, w = cfg.resized_size(arr.shape[1], arr.shape[2])
    out = np.empty((arr.shape[0], h, w, 3), dtype=np.uint8)
    for i, frame in enumerate(arr):
        out[i] = np.asarray(Image.fromarray(frame).resize((w, h), resample=cfg.resample))
    return out


@lru_cache(maxsize=8)
def _normalise_lut(cfg: VisionPreprocessConfig) -> np.ndarray:
    """``float32 [3, 256]``: normalised value of every uint8 level, computed as transformers does.

    transformers rescales in float64 then casts to float32, and normalises in float32
    (``(x - mean) / std``); a per-level table reproduces that bit for bit at uint8 cost.
    """
    levels = (np.arange(256, dtype=np.float64) * cfg.rescale_factor).astype(np.float32)
    mean = np.asarray(cfg.image_mean, dtype=np.float32)[:, None]
    std = np.asarray(cfg.image_std, dtype=np.float32)[:, None]
    return (levels[None, :] - mean) / std


def patchify_video(frames: np.ndarray | torch.Tensor,
                   cfg: VisionPreprocessConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise resized frames and flatten them into the vision encoder's patch rows.

    ``F`` is padded to a multiple of ``temporal_patch_size`` by repeating the last frame (as the
    transformers video processor). Rows come out in merge-unit order: temporal grid, merged row,
    merged column, then the ``merge_size x merge_size`` patches of the unit; columns are
    ``(channel, temporal, patch_row, patch_col)``, the layout of the ViT's Conv3d patch embedding.

    Args:
        frames: ``uint8 [F, h, w, 3]`` RGB frames already resized (``h, w`` multiples of ``cfg.factor``).
        cfg: the family's preprocessing config.

    Returns:
        ``pixel_values``: float32 ``[grid_t * grid_h * grid_w, 3 * tp * p * p]``;
        ``grid_thw``: int64 ``[1, 3]`` = ``[[grid_t, h / p, w / p]]``.
    """
    arr = _as_frames(frames)
    n_frames, h, w, _ = arr.shape
    if h % cfg.factor or w % cfg.factor:
        raise ValueError(f"frame size {h}x{w} is not a multiple of {cfg.factor}; call resize_frames first")
    tp, p, m = cfg.temporal_patch_size, cfg.patch_size, cfg.merge_size
    if pad := -n_frames % tp:
        arr = np.concatenate([arr, np.repeat(arr[-1:], pad, axis=0)], axis=0)
    gt, gh, gw = arr.shape[0] // tp, h // p, w // p
    # uint8 [F', h, w, C] -> [gt, gh/m, gw/m, m, m, C, tp, p, p] (a view); the per-channel table lookup
    # writes the float rows in that order at once (no float transpose copy).
    u8 = arr.reshape(gt, tp, gh // m, m, p, gw // m, m, p, 3).transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    rows = np.empty(u8.shape, dtype=np.float32)
    lut = _normalise_lut(cfg)
    for c in range(3):
        np.take(lut[c], u8[:, :, :, :, :, c], out=rows[:, :, :, :, :, c], mode="clip")  # uint8: always in range
    pixel_values = torch.from_numpy(rows.reshape(gt * gh * gw, 3 * tp * p * p))
    grid_thw = torch.tensor([[gt, gh, gw]], dtype=torch.long)
    return pixel_values, grid_thw


def preprocess_video(frames: np.ndarray | torch.Tensor,
                     cfg: VisionPreprocessConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`resize_frames` then :func:`patchify_video`.

    Args:
        frames: ``uint8 [F, H, W, 3]`` RGB frames sampled at ``cfg.fps``.
        cfg: the family's preprocessing config.

    Returns:
        ``(pixel_values float32 [N_patches, 3*tp*p*p], grid_thw int64 [1, 3])``.
    """
    return patchify_video(resize_frames(frames, cfg), cfg)


@dataclass(frozen=True)
class PreparedVideo:
    """Frames resized and patchified ahead of the model call (on a preparation thread, say).

    The model thread then only runs the vision tower; :meth:`patches` waits for the work if it is not
    done yet (and raises what it raised).

    Attributes:
        frames: the ``uint8 [F, H, W, 3]`` array it was made from; a request uses it only for this
            very array (matched by identity, so a window whose video was shed or replaced is encoded
            from its own frames).
        cfg: the preprocessing it was made with.
        patches: returns :func:`preprocess_video`'s ``(pixel_values [N, 3*tp*p*p], grid_thw [1, 3])``.
        cancel: stops the work if it has not started (when the frames will not be encoded), or None.
    """

    frames: np.ndarray
    cfg: VisionPreprocessConfig
    patches: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    cancel: Callable[[], object] | None = None

    def matches(self, frames: np.ndarray, cfg: VisionPreprocessConfig) -> bool:
        """Whether these are the patches of ``frames`` under ``cfg``."""
        return self.frames is frames and self.cfg == cfg
