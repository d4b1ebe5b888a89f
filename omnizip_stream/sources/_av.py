"""The one PyAV demux/decode loop, shared by the file, URL and camera sources and by ``media.decode_clip``.

A :class:`Decoder` turns an opened container into :class:`AudioChunk` / :class:`VideoFrame` items in
session time: video sampled by timestamp at ``fps`` and scaled at decode to ``max_side``; audio
resampled to 16 kHz and averaged to mono (float32), its times counted in samples from an anchor so
windows get exact sample counts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from omnizip_stream.sources.base import (
    SAMPLE_RATE_HZ,
    AudioChunk,
    MediaError,
    SourceError,
    StreamCounters,
    VideoFrame,
    one_line,
)
from omnizip_stream.windowing import FrameSampler

logger = logging.getLogger(__name__)

_AUDIO_JUMP_S = 0.1  # an input timestamp this far from the sample count re-anchors the audio clock
# Containers whose header duration is exact (not estimated from a bitrate), so less media means truncation.
_RELIABLE_DURATION_FORMATS = ("mov", "mp4", "matroska", "webm", "wav", "avi", "flac", "ogg")


def import_av() -> Any:
    """Import PyAV lazily, turning its absence into a one-line :class:`SourceError`."""
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is installed in every test environment
        raise SourceError(
            f"PyAV is required for media input: pip install 'omnizip-stream[stream]' ({one_line(exc)})"
        ) from exc
    return av


class ReadError(MediaError):
    """Reading from the container failed mid-stream (network loss, I/O error, truncated data)."""


def av_reason(exc: BaseException) -> str:
    """Return a short one-line reason from a PyAV/FFmpeg exception."""
    strerror = getattr(exc, "strerror", None)
    return one_line(strerror or exc or type(exc).__name__)


def _sniff(path: str) -> str:
    """Guess what a file that FFmpeg rejected is, from its first bytes (for the error message)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return ""
    if not head:
        return "the file is empty"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide"):
        return "an MP4/MOV file that is corrupt or truncated"
    for magic, what in ((b"RIFF", "a RIFF (WAV/AVI) file"), (b"\x1aE\xdf\xa3", "a Matroska/WebM file"),
                        (b"OggS", "an Ogg file"), (b"ID3", "an MP3 file"), (b"fLaC", "a FLAC file"),
                        (b"\x47", "an MPEG-TS file")):
        if head.startswith(magic):
            return f"{what} that is corrupt or truncated"
    return "not a media file FFmpeg recognises, or a corrupt/truncated one"


def open_file(path: str | os.PathLike[str]) -> Any:
    """Open a local media file for reading.

    Args:
        path: file path.

    Returns:
        A PyAV input container.

    Raises:
        MediaError: missing file, a directory, unreadable, not media or corrupt/truncated.
    """
    av = import_av()
    p = os.fspath(path)
    if not os.path.exists(p):
        raise MediaError(f"{p}: no such file")
    if os.path.isdir(p):
        raise MediaError(f"{p}: is a directory, not a media file")
    try:
        return av.open(p, mode="r")
    except av.error.InvalidDataError as exc:
        raise MediaError(f"{p}: cannot be read: {_sniff(p)} ({av_reason(exc)})") from exc
    except av.error.PermissionError as exc:
        raise MediaError(f"{p}: permission denied") from exc
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"{p}: cannot be opened: {av_reason(exc)}") from exc


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """``(width, height)`` scaled down (aspect kept, never up) so that the longer side is <= ``max_side``."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _select(streams: Any, kind: str) -> tuple[Any, bool]:
    """First decodable stream of ``kind`` and whether an undecodable one was seen."""
    undecodable = False
    for s in streams:
        if s.type != kind:
            continue
        if s.codec_context is None:
            undecodable = True
            continue
        return s, undecodable
    return None, undecodable


class Decoder:
    """Demux + decode one opened container into session-time items.

    Args:
        container: an open PyAV input container.
        name: what to call it in errors (a path, a URL, a device).
        fps: video frames kept per second (by timestamp); None keeps all.
        max_side: scale frames at decode so the longer side is at most this many pixels.
        time_offset_s: added to every media time (looping, live anchoring).
        origin_s: media time that maps to ``time_offset_s``; when None, the container's start time
            (``origin_first=False``) or the time of the first decoded frame (``origin_first=True``, for live
            inputs whose first packets may have been consumed while probing).
        strict: True -> a damaged packet raises :class:`MediaError`; False -> skipped and counted.
        sampler: a :class:`FrameSampler` to share across re-opens (new one at ``fps`` when None).
        counters: counts skipped packets.
        want_audio / want_video: which kinds to decode.

    Raises:
        MediaError: no decodable audio or video stream (unsupported codec, no streams).
    """

    def __init__(
        self,
        container: Any,
        *,
        name: str,
        fps: float | None = None,
        max_side: int | None = None,
        time_offset_s: float = 0.0,
        origin_s: float | None = None,
        strict: bool = True,
        sampler: FrameSampler | None = None,
        counters: StreamCounters | None = None,
        want_audio: bool = True,
        want_video: bool = True,
        origin_first: bool = False,
    ) -> None:
        self.av = import_av()
        self.container = container
        self.name = name
        self.max_side = max_side
        self.time_offset_s = time_offset_s
        self.strict = strict
        self.sampler = sampler if sampler is not None else FrameSampler(fps)
        self.counters = counters if counters is not None else StreamCounters()
        streams = list(container.streams)
        v, v_bad = _select(streams, "video") if want_video else (None, False)
        a, a_bad = _select(streams, "audio") if want_audio else (None, False)
        if v is None and a is None:
            if v_bad or a_bad:
                raise MediaError(f"{name}: unsupported codec (no decoder for its audio/video stream in this FFmpeg build)")
            raise MediaError(f"{name}: no audio or video stream")
        if v_bad or a_bad:
            logger.warning("%s: a %s stream has an unsupported codec; using the other one only",
                           name, "video" if v_bad else "audio")
        if v is not None:
            v.thread_type = "AUTO"
        self.video_stream, self.audio_stream = v, a
        rate = (v.average_rate or v.guessed_rate) if v is not None else None
        self.video_rate_hz = float(rate) if rate else 30.0
        if origin_s is None and not origin_first and container.start_time is not None:
            origin_s = container.start_time / 1e6
        self.origin_s = origin_s
        self._duration_s = container.duration / 1e6 if container.duration else None
        self.end_s = time_offset_s  # session time just after the last decoded media
        self.frames_decoded = 0
        self._resampler: Any = None
        self._a_key: tuple[Any, ...] | None = None
        self._a_anchor_s = 0.0
        self._a_count = 0
        self._a_in_expected = 0.0
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}

    @property
    def has_audio(self) -> bool:
        """Whether an audio stream is decoded."""
        return self.audio_stream is not None

    @property
    def has_video(self) -> bool:
        """Whether a video stream is decoded."""
        return self.video_stream is not None

    @property
    def duration_s(self) -> float | None:
        """Container duration in seconds when the container knows it."""
        return self._duration_s

    def _session(self, media_t: float) -> float:
        if self.origin_s is None:
            self.origin_s = media_t
        return media_t - self.origin_s + self.time_offset_s

    def __iter__(self) -> Iterator[AudioChunk | VideoFrame]:
        av = self.av
        streams = [s for s in (self.video_stream, self.audio_stream) if s is not None]
        packets = self.container.demux(*streams)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except (av.FFmpegError, OSError) as exc:
                raise ReadError(f"{self.name}: read failed at {self.end_s:.2f} s: {av_reason(exc)}") from exc
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                if self.strict:
                    raise MediaError(
                        f"{self.name}: corrupt or truncated media at {self.end_s:.2f} s "
                        f"(cannot decode {packet.stream.type}: {av_reason(exc)})"
                    ) from exc
                self.counters.add(decode_errors=1)
                continue
            for frame in frames:
                if isinstance(frame, av.VideoFrame):
                    item = self._video(frame)
                    if item is not None:
                        yield item
                else:
                    yield from self._audio(frame)
        yield from self._flush_audio()
        if self.strict:
            self._check_complete()

    def _check_complete(self) -> None:
        """Raise if a file whose header states its duration decoded to clearly less (truncated)."""
        fmt = self.container.format.name or ""
        declared = self.duration_s
        if declared is None or not any(k in fmt for k in _RELIABLE_DURATION_FORMATS):
            return
        got = self.end_s - self.time_offset_s
        if got < declared - max(0.25, 0.05 * declared):
            raise MediaError(f"{self.name}: truncated or corrupt: only {max(got, 0.0):.2f} s of the "
                             f"{declared:.2f} s its header declares could be decoded")

    # ------------------------------------------------------------------ video
    def _video(self, frame: Any) -> VideoFrame | None:
        if frame.pts is not None:
            t = self._session(float(frame.time))
        else:
            t = self.end_s
        self.end_s = max(self.end_s, t + 1.0 / self.video_rate_hz)
        self.frames_decoded += 1
        if not self.sampler.accept(t):
            return None
        key = (frame.width, frame.height)
        if key not in self._sizes:
            self._sizes[key] = scaled_size(frame.width, frame.height, self.max_side)
        w, h = self._sizes[key]
        if (w, h) == key:
            image = frame.to_ndarray(format="rgb24")
        else:
            image = frame.to_ndarray(format="rgb24", width=w, height=h)
        return VideoFrame(t, np.ascontiguousarray(image, dtype=np.uint8))

    # ------------------------------------------------------------------ audio
    def _audio(self, frame: Any) -> Iterator[AudioChunk]:
        t_in = float(frame.time) if frame.pts is not None else self._a_in_expected
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        jumped = self._resampler is not None and abs(t_in - self._a_in_expected) > _AUDIO_JUMP_S
        if self._resampler is None or key != self._a_key or jumped:
            yield from self._flush_audio()
            self._resampler = self.av.AudioResampler(format="fltp", rate=SAMPLE_RATE_HZ)
            self._a_key = key
            self._a_anchor_s = self._session(t_in)
            self._a_count = 0
        self._a_in_expected = t_in + frame.samples / frame.sample_rate
        for out in self._resampler.resample(frame):
            yield from self._chunk(out)

    def _flush_audio(self) -> Iterator[AudioChunk]:
        if self._resampler is None:
            return
        for out in self._resampler.resample(None):
            yield from self._chunk(out)
        self._resampler = None

    def _chunk(self, out: Any) -> Iterator[AudioChunk]:
        arr = out.to_ndarray()  # fltp: [channels, n]
        mono = arr.mean(axis=0, dtype=np.float32) if arr.shape[0] > 1 else arr[0]
        n = mono.shape[0]
        if n == 0:
            return
        pts = self._a_anchor_s + self._a_count / SAMPLE_RATE_HZ
        self._a_count += n
        self.end_s = max(self.end_s, pts + n / SAMPLE_RATE_HZ)
        yield AudioChunk(pts, np.ascontiguousarray(mono, dtype=np.float32))
