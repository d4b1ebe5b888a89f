"""The unit of live media the engine ingests: a time window of audio and video."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE_HZ = 16_000


@dataclass(frozen=True)
class Window:
    """A window of one or more model chunks (2 s each for Qwen2.5-Omni).

    Attributes:
        t0_s: start time of the window in stream seconds.
        audio: ``[n]`` float32 mono samples at 16 kHz in [-1, 1]; empty when the microphone is
            missing or lost (then the window is video-only).
        frames: ``[F, H, W, 3]`` uint8 RGB video frames (``F`` may be 0 for an audio-only window).
        frame_pts_s: ``[F]`` float64 presentation time of each frame in stream seconds.
        duration_s: window length in seconds; defaults to the audio length.
        video_dropped: frames of this window the session's drop policy removed (the model behind real time).
    """

    t0_s: float
    audio: np.ndarray
    frames: np.ndarray
    frame_pts_s: np.ndarray
    duration_s: float | None = None
    video_dropped: int = 0

    def __post_init__(self) -> None:
        audio = np.asarray(self.audio)
        if audio.ndim != 1:
            raise ValueError(f"audio must be 1-D [n] at 16 kHz, got shape {audio.shape}")
        frames = np.asarray(self.frames)
        if frames.size and (frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8):
            raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
        pts = np.asarray(self.frame_pts_s, dtype=np.float64)
        n_frames = frames.shape[0] if frames.size else 0
        if pts.shape != (n_frames,):
            raise ValueError(f"frame_pts_s must have one time per frame ({n_frames}), got shape {pts.shape}")
        object.__setattr__(self, "audio", audio.astype(np.float32, copy=False))
        object.__setattr__(self, "frame_pts_s", pts)
        if not frames.size:
            object.__setattr__(self, "frames", np.zeros((0, 0, 0, 3), np.uint8))
        if self.duration_s is None:
            if audio.size == 0:
                raise ValueError("duration_s is required for a window without audio")
            object.__setattr__(self, "duration_s", audio.size / SAMPLE_RATE_HZ)
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError(f"duration_s must be positive, got {self.duration_s}")

    @property
    def t1_s(self) -> float:
        """End time of the window in stream seconds."""
        assert self.duration_s is not None
        return self.t0_s + self.duration_s

    @property
    def num_frames(self) -> int:
        """Number of video frames ``F``."""
        return int(self.frame_pts_s.shape[0])
