"""The source protocol: a source has ``kinds`` and one ``async recv()``; every item carries its time.

Modelled on aiortc's ``MediaStreamTrack``: ``recv()`` returns the next timestamped item and raises
:class:`SourceEnded` at the end of the media, or :class:`SourceError` (one user-facing line) when the
source failed for good. Times are *session* seconds: 0 is the start of the media (files, synthetic)
or the moment the session opened (devices, URLs), so audio and video of different devices share a
time axis. Audio is always delivered as 16 kHz mono float32; sources resample at decode.
"""

from __future__ import annotations

import threading
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
    """One stream's media counters, from the sources to the model's queue: its one set of drop counters.

    All audio quantities are in 16 kHz samples. Updated from worker threads and the loop through
    :meth:`add` (locked). Nothing is ever dropped without being counted here: the sources and the
    windowing count what they receive, pad and repeat; the session (``StreamSession.attach_source``
    shares this object) counts what its drop policy sheds.

    Attributes:
        video_frames_in: frames that reached the windower (after fps sampling at the source).
        video_frames_out: frames delivered inside windows.
        video_dropped: frames dropped because the model fell behind real time (the session's one drop
            policy, ``omnizip_stream.server.scheduler``), plus any a device's buffer lost.
        video_frames_repeated: grid slots of a window no frame fell into, filled with the nearest frame
            (a camera slower than the model's fps, a gap in the video).
        windows_video_stripped: pending windows whose video the drop policy removed.
        video_late: frames that arrived after their window had been emitted (discarded).
        audio_samples_out: real (captured/decoded) samples delivered inside windows.
        audio_padded_samples: zero samples inserted where audio was missing (gaps, lost microphone
            during part of a window, the tail of the last window).
        audio_dropped_samples: samples lost (always also logged as a warning): whole windows beyond the
            session's backlog bound, or blocks a device's callback could not hand over.
        windows_dropped: whole windows (audio included) the session dropped beyond its backlog bound.
        audio_late_samples: samples that arrived after their window had been emitted (discarded).
        windows_out: windows delivered.
        windows_skipped_empty: windows with neither audio nor video (all sources lost) not delivered.
        windows_without_video: windows built with audio only although the source has video (a lost
            camera, a live stream waiting for its first keyframe, a damaged stretch of a file); windows
            whose video the drop policy removed later are counted in ``video_dropped`` instead.
        source_restarts: successful reconnects / reopens of a lost device or stream.
        corrupt_packets: damaged packets skipped (corrupt files in ``stream``, live streams); ``decode_clip``
            raises instead.
    """

    video_frames_in: int = 0
    video_frames_out: int = 0
    video_dropped: int = 0
    video_frames_repeated: int = 0
    windows_video_stripped: int = 0
    video_late: int = 0
    audio_samples_out: int = 0
    audio_padded_samples: int = 0
    audio_dropped_samples: int = 0
    audio_late_samples: int = 0
    windows_dropped: int = 0
    windows_out: int = 0
    windows_skipped_empty: int = 0
    windows_without_video: int = 0
    source_restarts: int = 0
    corrupt_packets: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        """Add ``deltas`` to the named counters (thread-safe)."""
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + int(delta))

    def snapshot(self) -> dict[str, int]:
        """Return a consistent copy of all counters."""
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
