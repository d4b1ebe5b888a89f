"""The source protocol: a source has ``kinds`` and one ``async recv()``; every item carries its time.

Modelled on aiortc's ``MediaStreamTrack``: ``recv()`` returns the next timestamped item and raises
:class:`SourceEnded` at the end of the media, or :class:`SourceError` (one user-facing line) when the
source failed for good. Times are *session* seconds: 0 is the start of the media (files, synthetic)
or the moment the session opened (devices, URLs), so audio and video of different devices share a
time axis. Audio is always delivered as 16 kHz mono float32; sources resample at decode.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Protocol, runtime_checkable

import numpy as np

from omnizip_stream.window import SAMPLE_RATE_HZ

__all__ = [
    "SAMPLE_RATE_HZ",
    "AudioChunk",
    "MediaError",
    "Source",
    "SourceEnded",
    "SourceError",
    "StreamCounters",
    "VideoFrame",
    "one_line",
]


def one_line(text: object) -> str:
    """Collapse any message to a single line (errors shown to users are one line)."""
    return " ".join(str(text).split())


class SourceEnded(Exception):
    """The source has no more media (end of file, end of a finite stream)."""


class SourceError(Exception):
    """A source failed for good; ``str(exc)`` is one line meant for the user.

    Args:
        message: what went wrong and, where useful, what exists instead (e.g. the device list).
    """

    def __init__(self, message: str) -> None:
        self.message = one_line(message)
        super().__init__(self.message)


class MediaError(SourceError, ValueError):
    """A media file cannot be used: missing, not media, corrupt/truncated, unsupported codec, no streams."""


@dataclass(frozen=True)
class AudioChunk:
    """A block of audio in session time.

    Attributes:
        pts_s: session time of the first sample, seconds.
        samples: ``[n]`` float32 mono samples at 16 kHz (``SAMPLE_RATE_HZ``), nominally in [-1, 1].
    """

    pts_s: float
    samples: np.ndarray

    @property
    def duration_s(self) -> float:
        """Length of the block in seconds."""
        return self.samples.shape[0] / SAMPLE_RATE_HZ

    @property
    def end_s(self) -> float:
        """Session time just after the last sample, seconds."""
        return self.pts_s + self.duration_s


@dataclass(frozen=True)
class VideoFrame:
    """One video frame in session time.

    Attributes:
        pts_s: presentation time in session seconds.
        image: ``[H, W, 3]`` uint8 RGB.
    """

    pts_s: float
    image: np.ndarray


MediaItem = AudioChunk | VideoFrame


@runtime_checkable
class Source(Protocol):
    """A live or recorded media source.

    Attributes:
        name: short human-readable name for logs and errors (``"camera /dev/video0"``, a path ...).
        kinds: ``{"audio"}``, ``{"video"}`` or both; final once :meth:`start` has returned.
    """

    name: str
    kinds: frozenset[str]

    async def start(self) -> None:
        """Open the device/file/stream; raises :class:`SourceError` when it cannot be opened."""
        ...

    async def recv(self) -> AudioChunk | VideoFrame:
        """Next item in time order per kind; raises :class:`SourceEnded` or :class:`SourceError`."""
        ...

    async def aclose(self) -> None:
        """Stop producing and release the device; idempotent."""
        ...


@dataclass
class StreamCounters:
    """Counters for everything that happens to media between the sources and the windows.

    All audio quantities are in 16 kHz samples. Updated from worker threads and the loop through
    :meth:`add` (locked). Nothing is ever dropped without being counted here.

    Attributes:
        video_frames_in: frames that reached the windower (after fps sampling at the source).
        video_frames_out: frames delivered inside windows.
        video_dropped: frames dropped under backpressure (source buffers and the window queue).
        video_late: frames that arrived after their window had been emitted (discarded).
        audio_samples_out: real (captured/decoded) samples delivered inside windows.
        audio_padded_samples: zero samples inserted where audio was missing (gaps, lost microphone
            during part of a window, the tail of the last window).
        audio_dropped_samples: samples lost under backpressure (always also logged as a warning).
        audio_late_samples: samples that arrived after their window had been emitted (discarded).
        windows_out: windows delivered.
        windows_skipped_empty: windows with neither audio nor video (all sources lost) not delivered.
        windows_without_video: windows built with audio only although the source has video (a lost
            camera, a live stream waiting for its first keyframe, a damaged stretch of a file); windows
            whose video was dropped later under backpressure are counted in ``video_dropped`` instead.
        source_restarts: successful reconnects / reopens of a lost device or stream.
        corrupt_packets: damaged packets skipped (corrupt files in ``stream``, live streams); ``decode_clip``
            raises instead.
    """

    video_frames_in: int = 0
    video_frames_out: int = 0
    video_dropped: int = 0
    video_late: int = 0
    audio_samples_out: int = 0
    audio_padded_samples: int = 0
    audio_dropped_samples: int = 0
    audio_late_samples: int = 0
    windows_out: int = 0
    windows_skipped_empty: int = 0
    windows_without_video: int = 0
    source_restarts: int = 0
    corrupt_packets: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _video_drop_pts: deque[float] = field(default_factory=lambda: deque(maxlen=100_000), repr=False)

    def add(self, **deltas: int) -> None:
        """Add ``deltas`` to the named counters (thread-safe)."""
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + int(delta))

    def note_video_drop(self, pts_s: float) -> None:
        """Count one video frame dropped upstream, remembering its time for per-window accounting."""
        with self._lock:
            self.video_dropped += 1
            self._video_drop_pts.append(float(pts_s))

    def drain_video_drops(self) -> list[float]:
        """Return the times of the frames dropped upstream since the last call (for ``Window.video_dropped``)."""
        with self._lock:
            out = list(self._video_drop_pts)
            self._video_drop_pts.clear()
        return out

    def snapshot(self) -> dict[str, int]:
        """Return a consistent copy of all counters."""
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
