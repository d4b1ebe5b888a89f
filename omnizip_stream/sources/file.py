"""Replay any file PyAV can decode as a source: in real time (default) or as fast as possible, optionally looping.

Decoding runs in a worker thread (the aiortc ``MediaPlayer`` pattern); with ``realtime=True`` each item
is released when the session clock reaches its time (video at its pts, audio at the end of the block,
as a device would deliver it), so a file behaves like a live camera + microphone. A file damaged in
the middle plays on: damaged packets are skipped and counted (``corrupt_packets``), a truncated end is
warned about; only a file that cannot be opened, or in which nothing at all decodes, is an error.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from omnizip_stream.clock import Clock
from omnizip_stream.sources._av import Decoder
from omnizip_stream.sources._avopen import OPEN_TIMEOUT_S, open_file
from omnizip_stream.sources._buffer import ThreadedSource
from omnizip_stream.sources.base import AudioChunk, MediaError, StreamCounters
from omnizip_stream.windowing import FrameSampler

logger = logging.getLogger(__name__)


class FileSource(ThreadedSource):
    """A media file as a source.

    Args:
        path: the file.
        realtime: pace to the session clock (live behaviour, drop policy) or decode as fast as possible
            (blocking backpressure, nothing dropped).
        loop: start again at the end, with times continuing (forever unless the consumer stops).
        fps: video frames kept per second (sampled by timestamp before RGB conversion); None keeps all.
        max_side: scale frames at decode so the longer side is at most this (None: native size).
        clock / session_t0 / counters: shared session objects.
        maxsize: buffer capacity in items.
        open_timeout_s: opening (a FIFO nobody writes to, a stalled mount) fails after this long.

    Raises (from :meth:`start`):
        MediaError: missing file, not media, corrupt/truncated header, unsupported codec, no streams,
            a still image, opening stalled. From :meth:`recv`: nothing in the file could be decoded.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        realtime: bool = True,
        loop: bool = False,
        fps: float | None = 2.0,
        max_side: int | None = None,
        clock: Clock | None = None,
        session_t0: float | None = None,
        counters: StreamCounters | None = None,
        maxsize: int = 64,
        open_timeout_s: float = OPEN_TIMEOUT_S,
    ) -> None:
        self.path = os.fspath(path)
        self.open_timeout_s = open_timeout_s
        super().__init__(self.path, live=realtime, counters=counters, clock=clock, session_t0=session_t0,
                         maxsize=maxsize)
        self.realtime = realtime
        self.loop = loop
        self.fps = fps
        self.max_side = max_side
        self._container: Any = None
        self._decoder: Decoder | None = None
        self._sampler = FrameSampler(fps)

    def _make_decoder(self, container: Any, offset_s: float) -> Decoder:
        return Decoder(container, name=self.path, max_side=self.max_side, time_offset_s=offset_s,
                       strict=False, sampler=self._sampler, counters=self.counters)

    def _open(self) -> None:
        container = open_file(self.path, open_timeout_s=self.open_timeout_s)
        try:
            self._decoder = self._make_decoder(container, 0.0)
            _refuse_still_image(self.path, container, self._decoder)
        except MediaError:
            container.close()
            raise
        self._container = container
        self.kinds = frozenset(k for k, on in (("audio", self._decoder.has_audio),
                                                ("video", self._decoder.has_video)) if on)

    def _run(self) -> None:
        decoder, container = self._decoder, self._container
        assert decoder is not None
        try:
            while True:
                start_s = decoder.time_offset_s
                delivered = False
                for item in decoder:
                    delivered = True
                    if self.realtime:
                        due = item.end_s if isinstance(item, AudioChunk) else item.pts_s
                        if not self._sleep_until_session(due):
                            return
                    if not self._emit(item):
                        return
                if not delivered and not self._stop.is_set():
                    damage = f" ({decoder.corrupt_packets} corrupt packets)" if decoder.corrupt_packets else ""
                    raise MediaError(f"{self.path}: corrupt: nothing in it could be decoded{damage}")
                if not self.loop or self._stop.is_set():
                    return
                if decoder.end_s <= start_s + 1e-3:
                    raise MediaError(f"{self.path}: nothing decodable to loop over")
                container.close()
                container = self._container = open_file(self.path, open_timeout_s=self.open_timeout_s)
                decoder = self._decoder = self._make_decoder(container, start_s + _loop_period(decoder))
                logger.debug("%s: looping at %.3f s", self.path, decoder.time_offset_s)
        finally:
            container.close()


def _refuse_still_image(path: str, container: Any, decoder: Decoder) -> None:
    """Raise :class:`MediaError` for a still image (a PNG, a JPEG ...): it gives no window to stream."""
    fmt = container.format.name or ""
    if decoder.has_audio or not (fmt.endswith("_pipe") or fmt in ("image2", "image2pipe")):
        return
    codec = decoder.video_stream.codec_context.name if decoder.video_stream is not None else fmt
    # no advice to use `infer` for it: infer refuses a still too (less than one model time step)
    raise MediaError(f"{path}: a still image ({codec}), not a video or audio clip: streaming needs moving "
                     "media (a video file, a camera, a URL or synthetic)")


def _loop_period(decoder: Decoder) -> float:
    """Return the length of one pass in seconds.

    The header duration when it agrees with what was decoded (exact loops despite codec padding), else
    the decoded length.
    """
    decoded = decoder.end_s - decoder.time_offset_s
    declared = decoder.duration_s
    if declared is not None and abs(declared - decoded) < 0.1:
        return declared
    return decoded
