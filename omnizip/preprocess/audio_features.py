"""Audio preprocessing: 16 kHz mono -> 128-bin Whisper log-mel, as the checkpoints' processors compute it.

Also a per-window variant for streaming (:func:`log_mel_window`). Pure functions of arrays: no file
I/O, nothing happens on import.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch

from omnizip.preprocess.vision import Family, _check_family

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


def audio_encoder_positions(n_mel_frames: int, family: str, *, n_window: int = 50) -> int:
    """Count the positions the audio encoder's transformer layers see for ``n_mel_frames`` valid frames.

    The encoder cuts the frames into chunks of ``2 * n_window`` (the last one shorter) and downsamples
    each chunk on its own. Qwen2.5-Omni: one stride-2 conv, ``(c - 1) // 2 + 1`` per chunk (50 / s;
    the tokens are pooled 2:1 after the layers). Qwen3-Omni: the layers run on the LLM audio tokens,
    :func:`audio_token_count`.

    Args:
        n_mel_frames: valid mel frames (100 per second).
        family: ``"qwen2_5_omni"`` or ``"qwen3_omni"``.
        n_window: the audio encoder's ``n_window`` (Qwen2.5-Omni: 100; Qwen3-Omni: 50).
    """
    family = _check_family(family)
    if n_mel_frames < 0:
        raise ValueError(f"n_mel_frames must be >= 0, got {n_mel_frames}")
    if family == "qwen3_omni":
        return audio_token_count(n_mel_frames, family, n_window=n_window)
    chunk = 2 * n_window
    full, tail = divmod(n_mel_frames, chunk)
    return full * ((chunk - 1) // 2 + 1) + ((tail - 1) // 2 + 1 if tail else 0)


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
