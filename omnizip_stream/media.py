"""Offline decode of a whole clip for ``omnizip infer`` / ``omnizip eval``.

Uses the same PyAV decode loop as the file source (``omnizip_stream.sources._av.Decoder``): audio
resampled to 16 kHz mono float32 on an exact sample axis, video sampled at ``fps`` by timestamp and
optionally scaled at decode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from omnizip_stream.sources._av import Decoder
from omnizip_stream.sources._avopen import OPEN_TIMEOUT_S, open_file
from omnizip_stream.sources.base import SAMPLE_RATE_HZ, AudioChunk, MediaError
from omnizip_stream.windowing import AudioTimeline, stack_frames

__all__ = ["Clip", "MediaError", "decode_clip"]


@dataclass(frozen=True)
class Clip:
    """A decoded clip.

    Attributes:
        audio: ``[n]`` float32 mono at 16 kHz, sample ``i`` at ``i / 16000`` s (empty without audio).
        frames: ``[F, H, W, 3]`` uint8 RGB (``F`` = 0 without video).
        frame_pts_s: ``[F]`` float64 time of each frame, seconds from the start of the clip.
        duration_s: length of the clip in seconds (the longer of audio and video).
        has_audio / has_video: which streams the file has (and were decoded).
    """

    audio: np.ndarray
    frames: np.ndarray
    frame_pts_s: np.ndarray
    duration_s: float
    has_audio: bool
    has_video: bool

    @property
    def sample_rate_hz(self) -> int:
        """Always 16000."""
        return SAMPLE_RATE_HZ


def decode_clip(
    path: str | os.PathLike[str],
    *,
    fps: float | None = 2.0,
    max_frames: int | None = None,
    max_side: int | None = None,
    open_timeout_s: float = OPEN_TIMEOUT_S,
) -> Clip:
    """Decode a media file into 16 kHz mono audio and RGB frames sampled at ``fps``.

    Args:
        path: any file PyAV/FFmpeg decodes (mp4, mkv, webm, mov, wav, m4a, mp3, ...).
        fps: video frames kept per second, by timestamp (None keeps every frame).
        max_frames: at most this many frames, picked evenly over the clip (first frame always kept).
        max_side: scale frames at decode so the longer side is at most this many pixels.
        open_timeout_s: opening may take this long (a FIFO nobody writes to is an error, not a hang).

    Returns:
        A :class:`Clip`.

    Raises:
        MediaError: (a ``ValueError``) missing file, not a media file, corrupt or truncated,
            unsupported codec, no audio/video stream, or nothing decodable; always one line.
        ValueError: bad ``fps`` / ``max_frames`` / ``max_side``.
    """
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    name = os.fspath(path)
    container = open_file(name, open_timeout_s=open_timeout_s)
    try:
        decoder = Decoder(container, name=name, fps=fps, max_side=max_side, strict=True)
        timeline = AudioTimeline()
        images: list[np.ndarray] = []
        pts: list[float] = []
        for item in decoder:
            if isinstance(item, AudioChunk):
                timeline.add(item.pts_s, item.samples)
            else:
                images.append(item.image)
                pts.append(item.pts_s)
    finally:
        container.close()
    if decoder.has_video and decoder.frames_decoded == 0 and timeline.end_index == 0:
        raise MediaError(f"{name}: corrupt or truncated (no frame could be decoded)")
    audio = timeline.take(0, timeline.end_index)[0] if decoder.has_audio else np.zeros(0, np.float32)
    if decoder.has_audio and not decoder.has_video and audio.shape[0] == 0:
        raise MediaError(f"{name}: corrupt or truncated (no audio could be decoded)")
    if max_frames is not None and len(images) > max_frames:
        keep = np.unique(np.linspace(0, len(images) - 1, max_frames).round().astype(int))
        images = [images[i] for i in keep]
        pts = [pts[i] for i in keep]
    frames = stack_frames(images)
    duration_s = max(audio.shape[0] / SAMPLE_RATE_HZ, decoder.end_s)
    return Clip(audio=audio, frames=frames, frame_pts_s=np.asarray(pts, dtype=np.float64), duration_s=duration_s,
                has_audio=decoder.has_audio, has_video=decoder.has_video)

