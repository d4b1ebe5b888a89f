"""The one PyAV demux/decode loop, shared by the file, URL and camera sources and by ``media.decode_clip``.

A :class:`Decoder` turns an opened container into :class:`AudioChunk` / :class:`VideoFrame` items in
session time: video sampled by timestamp at ``fps`` and scaled at decode to ``max_side``; audio
resampled to 16 kHz and averaged to mono (float32), its times counted in samples from an anchor so
windows get exact sample counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from omnizip_stream.sources._avopen import av_reason, import_av
from omnizip_stream.sources.base import (
    SAMPLE_RATE_HZ,
    AudioChunk,
    MediaError,
    StreamCounters,
    VideoFrame,
)
from omnizip_stream.windowing import FrameSampler

logger = logging.getLogger(__name__)

KEYFRAME_WARN_S = 2.0  # a live stream without a decodable video keyframe this long is warned about
_MAX_CONSECUTIVE_BAD_READS = 64  # unreadable packets in a row before a damaged input counts as lost
_AUDIO_JUMP_S = 0.1  # an input timestamp this far from the sample count re-anchors the audio clock
# Containers whose header duration is exact (not estimated from a bitrate), so less media means truncation.
_RELIABLE_DURATION_FORMATS = ("mov", "mp4", "matroska", "webm", "wav", "avi", "flac", "ogg")


class ReadError(MediaError):
    """Reading from the container failed mid-stream (network loss, I/O error, truncated data)."""


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
        strict: True -> a damaged packet or a truncated file raises :class:`MediaError`; False -> damaged
            packets are skipped and counted (``corrupt_packets``, warned once), truncation is warned.
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
        self.corrupt_packets = 0
        self._keyframe_wait_from_s: float | None = None
        self._keyframe_warned = False
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
        bad_reads = 0  # unreadable packets in a row
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.InvalidDataError as exc:  # damaged data the demuxer could not parse
                bad_reads += 1
                if self.strict or bad_reads > _MAX_CONSECUTIVE_BAD_READS:
                    raise ReadError(f"{self.name}: read failed at {self.end_s:.2f} s: {av_reason(exc)}") from exc
                self._corrupt(f"unreadable data ({av_reason(exc)})")
                packets = self.container.demux(*streams)  # the container resynchronises on the next read
                continue
            except (av.FFmpegError, OSError) as exc:
                reason = "no data within the read timeout" if isinstance(exc, av.error.ExitError) else av_reason(exc)
                raise ReadError(f"{self.name}: read failed at {self.end_s:.2f} s: {reason}") from exc
            bad_reads = 0
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                if self.strict:
                    raise MediaError(
                        f"{self.name}: corrupt or truncated media at {self.end_s:.2f} s "
                        f"(cannot decode {packet.stream.type}: {av_reason(exc)})"
                    ) from exc
                if packet.stream is self.video_stream and self.frames_decoded == 0 and not packet.is_keyframe:
                    self._await_keyframe(packet)  # a live stream joined mid-GOP: not damage
                else:
                    self._corrupt(f"cannot decode {packet.stream.type}: {av_reason(exc)}")
                continue
            if packet.is_corrupt and not self.strict:  # damage the demuxer saw (e.g. an MPEG-TS continuity error)
                self._corrupt(f"damaged {packet.stream.type} packet")
            for frame in frames:
                try:
                    items = self._convert(frame)
                except (av.FFmpegError, ValueError) as exc:  # a damaged frame (odd size/format): skip it
                    if self.strict:
                        raise MediaError(f"{self.name}: corrupt media at {self.end_s:.2f} s ({av_reason(exc)})") from exc
                    self._corrupt(f"bad {packet.stream.type} frame: {av_reason(exc)}")
                    continue
                yield from items
        yield from self._flush_audio()
        missing = self._missing()
        if missing is not None:
            if self.strict:
                raise MediaError(f"{self.name}: truncated or corrupt: {missing}")
            logger.warning("%s: truncated: %s", self.name, missing)

    def _convert(self, frame: Any) -> list[AudioChunk | VideoFrame]:
        """The items of one decoded frame (a sampled video frame, or resampled audio blocks)."""
        if isinstance(frame, self.av.VideoFrame):
            item = self._video(frame)
            return [] if item is None else [item]
        return list(self._audio(frame))

    def _corrupt(self, what: str) -> None:
        """Count one damaged packet that was skipped (non-strict); warn on the first one."""
        self.counters.add(corrupt_packets=1)
        self.corrupt_packets += 1
        if self.corrupt_packets == 1:
            logger.warning("%s: corrupt data at %.2f s (%s): skipping damaged packets, counted in corrupt_packets",
                           self.name, self.end_s, what)

    def _await_keyframe(self, packet: Any) -> None:
        """Note a video packet that cannot be decoded before the stream's first keyframe; warn once when long."""
        t = float(packet.pts * packet.time_base) if packet.pts is not None and packet.time_base else None
        if t is None:
            return
        if self._keyframe_wait_from_s is None:
            self._keyframe_wait_from_s = t
        waited = t - self._keyframe_wait_from_s
        if waited >= KEYFRAME_WARN_S and not self._keyframe_warned:
            self._keyframe_warned = True
            logger.warning("%s: no video keyframe after %.1f s, so no video can be decoded yet: the stream's "
                           "keyframe (I-frame) interval looks long; audio-only windows until one arrives "
                           "(counted in windows_without_video); set the camera's keyframe interval to 1-2 s",
                           self.name, waited)

    def _missing(self) -> str | None:
        """What is missing when a file whose header states its duration decoded to clearly less (truncated)."""
        fmt = self.container.format.name or ""
        declared = self.duration_s
        if declared is None or not any(k in fmt for k in _RELIABLE_DURATION_FORMATS):
            return None
        got = self.end_s - self.time_offset_s
        if got < declared - max(0.25, 0.05 * declared):
            return f"only {max(got, 0.0):.2f} s of the {declared:.2f} s its header declares could be decoded"
        return None

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
