"""Model-input preprocessing for Qwen2.5-Omni / Qwen3-Omni without torchvision.

Video: ``smart_resize`` -> PIL resize -> rescale/normalise -> patchify in the ViT's merge order. The
output is bit-identical to transformers' ``Qwen2VLImageProcessorPil`` applied to the same frames (the
video processor itself needs torchvision, whose wheel cannot load beside the CPU torch used here).
Audio: 16 kHz mono -> 128-bin Whisper log-mel, as the checkpoints' processors compute it, plus a
per-window variant for streaming (see :func:`log_mel_window`).

Pure functions of arrays: no file I/O, nothing happens on import.
"""

from __future__ import annotations

import math
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
    lut = _normalise_lut(cfg)
    chw = arr.transpose(0, 3, 1, 2)  # [F', 3, h, w] uint8 view
    x = np.stack([lut[c][chw[:, c]] for c in range(3)], axis=1)  # [F', 3, h, w] float32
    gt, gh, gw = arr.shape[0] // tp, h // p, w // p
    x = x.reshape(gt, tp, 3, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # gt, gh/m, gw/m, m, m, C, tp, p, p
    pixel_values = torch.from_numpy(np.ascontiguousarray(x).reshape(gt * gh * gw, 3 * tp * p * p))
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


# --------------------------------------------------------------------------------------------- audio

EndPadding = Literal["zeros", "reflect"]


@dataclass(frozen=True)
class AudioPreprocessConfig:
    """Whisper log-mel settings of one family's processor (128 mel bins, 25 ms window, 10 ms hop).

    Attributes:
        family: ``"qwen2_5_omni"`` or ``"qwen3_omni"``.
        sample_rate_hz: input sample rate; audio must already be resampled to it.
        n_mels: mel bins (``feature_size``).
        n_fft: STFT size in samples (window length).
        hop_length: STFT hop in samples (one mel frame = 10 ms).
        chunk_length_s: the extractor's ``chunk_length``; only sets its ``n_samples``/``nb_max_frames``
            (300 s -> 4 800 000 / 30 000); audio is never truncated here.
        end_padding: how the clip end is padded. Qwen2.5-Omni's processor pads every clip with zeros
            to 300 s and marks ``ceil(n / hop)`` frames valid; Qwen3-Omni's pads nothing (a single
            clip ends in the STFT's reflect padding) and marks ``n // hop`` frames valid.
        n_window: half the audio encoder's chunk in mel frames (Qwen3-Omni: 50 -> 1 s chunks); used
            by :func:`audio_token_count`.
    """

    family: Family
    sample_rate_hz: int = 16000
    n_mels: int = 128
    n_fft: int = 400
    hop_length: int = 160
    chunk_length_s: int = 300
    end_padding: EndPadding = "zeros"
    n_window: int = 100

    def __post_init__(self) -> None:
        _check_family(self.family)
        if self.end_padding not in ("zeros", "reflect"):
            raise ValueError(f"end_padding must be 'zeros' or 'reflect', got {self.end_padding!r}")
        for name in ("sample_rate_hz", "n_mels", "n_fft", "hop_length", "chunk_length_s", "n_window"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def for_family(cls, family: str, **overrides: Any) -> AudioPreprocessConfig:
        """Config of a family (Qwen2.5: zero end padding; Qwen3: reflect, ``n_window=50``)."""
        family = _check_family(family)
        if family == "qwen2_5_omni":
            base = cls(family="qwen2_5_omni", end_padding="zeros", n_window=100)
        else:
            base = cls(family="qwen3_omni", end_padding="reflect", n_window=50)
        return replace(base, **overrides) if overrides else base

    def num_frames(self, n_samples: int) -> int:
        """Count the valid mel frames of an ``n_samples`` clip (the processor's mask sum)."""
        if self.end_padding == "zeros":
            return -(-n_samples // self.hop_length)
        return n_samples // self.hop_length


def audio_token_count(n_mel_frames: int, family: str, *, n_window: int = 50) -> int:
    """Count the LLM audio tokens the audio encoder emits for ``n_mel_frames`` valid mel frames.

    Qwen2.5-Omni: conv stride 2 then 2x average pool, ``((n - 1) // 2 + 1 - 2) // 2 + 1`` (25 / s).
    Qwen3-Omni: three stride-2 convs per chunk of ``2 * n_window`` frames, 13 tokens per full chunk
    plus the tail's (13 / s for ``n_window = 50``, the only value whose per-chunk count is 13).

    Args:
        n_mel_frames: valid mel frames (100 per second).
        family: ``"qwen2_5_omni"`` or ``"qwen3_omni"``.
        n_window: Qwen3-Omni audio encoder ``n_window`` (ignored for Qwen2.5-Omni).

    Returns:
        Token count (0 for 0 frames).
    """
    family = _check_family(family)
    if n_mel_frames < 0:
        raise ValueError(f"n_mel_frames must be >= 0, got {n_mel_frames}")
    if n_mel_frames == 0:
        return 0
    if family == "qwen2_5_omni":
        return ((n_mel_frames - 1) // 2 + 1 - 2) // 2 + 1
    chunk = 2 * n_window
    tail = n_mel_frames % chunk
    after_conv1 = (tail - 1) // 2 + 1
    return ((after_conv1 - 1) // 2 + 1 - 1) // 2 + 1 + (n_mel_frames // chunk) * 13


@lru_cache(maxsize=4)
def whisper_feature_extractor(cfg: AudioPreprocessConfig) -> Any:
    """Return transformers' ``WhisperFeatureExtractor`` configured as the family's processor (cached)."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=cfg.n_mels, sampling_rate=cfg.sample_rate_hz,
                                   hop_length=cfg.hop_length, chunk_length=cfg.chunk_length_s,
                                   n_fft=cfg.n_fft, padding_value=0.0, return_attention_mask=True)


def _as_audio(audio: np.ndarray | torch.Tensor, name: str = "audio") -> np.ndarray:
    arr = audio.numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must be a 1-D float array of mono samples, got {arr.dtype} {tuple(arr.shape)}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf samples")
    return arr


def log_mel(audio: np.ndarray | torch.Tensor,
            cfg: AudioPreprocessConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-clip log-mel features with transformers' Whisper extractor, as the family's processor.

    Only the valid frames are returned (the processor's padded tail is dropped: the model gathers
    valid frames through ``feature_attention_mask`` anyway), so the result equals the processor's
    output on those frames. Long audio is never truncated (the extractor's 300-s limit is ignored).

    Args:
        audio: ``float32 [n]`` mono samples at ``cfg.sample_rate_hz`` (16 kHz), ``n > n_fft / 2``.
        cfg: audio config; default Qwen2.5-Omni.

    Returns:
        ``input_features`` float32 ``[1, n_mels, T]`` and ``feature_attention_mask`` int64 ``[1, T]``
        (all ones), ``T = cfg.num_frames(n)`` (100 frames per second).
    """
    cfg = cfg or AudioPreprocessConfig.for_family("qwen2_5_omni")
    wav = _as_audio(audio)
    if wav.shape[0] <= cfg.n_fft // 2:
        raise ValueError(f"audio must be longer than {cfg.n_fft // 2} samples, got {wav.shape[0]}")
    n_frames = cfg.num_frames(wav.shape[0])
    if cfg.end_padding == "zeros":
        # Zero padding as far as the 300-s pad reaches for the valid frames and the two frames after
        # them (the only padded frames that still see audio, so the global max is the same).
        padded = n_frames * cfg.hop_length + cfg.n_fft
        wav = np.concatenate([wav, np.zeros(padded - wav.shape[0], dtype=np.float32)])
    out = whisper_feature_extractor(cfg)(wav, sampling_rate=cfg.sample_rate_hz, padding="longest",
                                         truncation=False, return_attention_mask=False, return_tensors="np")
    feats = torch.from_numpy(np.ascontiguousarray(out["input_features"][:, :, :n_frames], dtype=np.float32))
    return feats, torch.ones((1, n_frames), dtype=torch.long)


@dataclass(frozen=True)
class MelWindow:
    """Log-mel features of one streaming window (see :func:`log_mel_window`).

    Attributes:
        input_features: float32 ``[1, n_mels, T]``.
        feature_attention_mask: int64 ``[1, T]`` (all ones).
        max_log10: the running maximum of ``log10(mel)`` after this window; pass it to the next call.
    """

    input_features: torch.Tensor
    feature_attention_mask: torch.Tensor
    max_log10: float


def log_mel_window(audio_window: np.ndarray | torch.Tensor, left_context: np.ndarray | torch.Tensor | None,
                   *, right_context: np.ndarray | torch.Tensor | None = None,
                   running_max_log10: float | None = None,
                   cfg: AudioPreprocessConfig | None = None) -> MelWindow:
    """Log-mel frames of one window of a stream, equal to the whole-clip frames up to the floor.

    The window must start on a hop boundary of the stream (2-s windows do). The STFT frames of the
    window are the whole clip's frames when ``left_context`` holds the ``n_fft / 2`` (200) samples
    before the window and ``right_context`` the ``n_fft / 2 - hop`` (40) samples after it (2.5 ms of
    look-ahead). Without ``right_context`` the window is the end of the stream and is padded as
    :func:`log_mel` pads a clip end. Whisper clamps every value to ``max - 8`` (log10 units) of the
    whole clip, which a stream cannot know; here the floor uses the running maximum over the stream
    so far, so a window differs from the whole clip only at bins below ``global_max - 8`` while the
    loudest part is still to come, by at most ``(global_max - running_max) / 4``. A stream with no
    look-ahead may omit ``right_context`` on every window: then each window's last frame also differs
    (measured on 10 s of speech-like noise in 2-s windows: 4 of 1000 frames, max |diff| 0.04-0.09;
    with the 40-sample look-ahead and the running max: identical).

    Args:
        audio_window: ``float32 [n]`` samples of the window; ``n`` a multiple of ``hop_length`` unless
            this is the last window.
        left_context: the samples just before the window (at least 200 are used), or ``None``/empty
            for the first window of the stream.
        right_context: the samples just after the window (at least 40), or ``None`` for the last window.
        running_max_log10: :attr:`MelWindow.max_log10` of the previous window, ``None`` for the first.
        cfg: audio config; default Qwen2.5-Omni.

    Returns:
        A :class:`MelWindow` with ``T = n // hop`` frames (the last window: ``cfg.num_frames(n)``).
    """
    cfg = cfg or AudioPreprocessConfig.for_family("qwen2_5_omni")
    half, hop = cfg.n_fft // 2, cfg.hop_length
    win = _as_audio(audio_window, "audio_window")
    left = np.zeros(0, np.float32) if left_context is None else _as_audio(left_context, "left_context")
    n = win.shape[0]
    if n == 0:
        raise ValueError("audio_window is empty")
    if left.shape[0] and left.shape[0] < half:
        raise ValueError(f"left_context must hold at least {half} samples (or none at stream start)")
    body = np.concatenate([left[-half:], win]) if left.shape[0] else win
    if right_context is not None:
        right = _as_audio(right_context, "right_context")
        if n % hop:
            raise ValueError(f"a window with right_context must hold a multiple of {hop} samples, got {n}")
        if right.shape[0] < half - hop:
            raise ValueError(f"right_context must hold at least {half - hop} samples")
        n_frames, body = n // hop, np.concatenate([body, right[: half - hop]])
    else:
        n_frames = cfg.num_frames(n)
        if cfg.end_padding == "zeros":
            body = np.concatenate([body, np.zeros(n_frames * hop + half - n, np.float32)])
        elif body.shape[0] > half:
            body = np.concatenate([body, body[-half - 1:-1][::-1]])
    if not left.shape[0]:
        if body.shape[0] <= half:
            raise ValueError(f"the first window must be longer than {half} samples")
        body = np.concatenate([body[1:half + 1][::-1], body])
    if n_frames == 0:
        raise ValueError(f"audio_window of {n} samples holds no complete mel frame")
    log_spec = _log10_mel(body, n_frames, cfg)
    window_max = log_spec.max()
    run_max = window_max if running_max_log10 is None else torch.maximum(
        window_max, torch.tensor(running_max_log10, dtype=torch.float32))
    feats = (torch.maximum(log_spec, run_max - 8.0) + 4.0) / 4.0
    return MelWindow(feats[None], torch.ones((1, n_frames), dtype=torch.long), float(run_max))


def _log10_mel(padded: np.ndarray, n_frames: int, cfg: AudioPreprocessConfig) -> torch.Tensor:
    """``float32 [n_mels, n_frames]`` log10 mel power of frames at ``j * hop`` of a pre-padded signal."""
    need = (n_frames - 1) * cfg.hop_length + cfg.n_fft
    if padded.shape[0] < need:
        raise ValueError(f"not enough samples around the window ({padded.shape[0]} < {need})")
    wav = torch.from_numpy(np.ascontiguousarray(padded[:need]))
    window = torch.hann_window(cfg.n_fft)
    stft = torch.stft(wav, cfg.n_fft, cfg.hop_length, window=window, center=False, return_complex=True)
    power = (stft.abs() ** 2).contiguous()
    filters = torch.from_numpy(whisper_feature_extractor(cfg).mel_filters).to(torch.float32)
    return torch.clamp(filters.T @ power, min=1e-10).log10()
