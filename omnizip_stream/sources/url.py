"""Network streams (RTSP, HTTP(S), UDP, TCP, RTMP, SRT) through PyAV, with reconnect and exponential backoff.

Stream times are mapped to session time at each (re)connection: the first media of a connection is
placed at the session time when the connection was ready (never before media already delivered), so
windows stay on the live clock across reconnects. Live streams are passed on as they arrive (what
FFmpeg buffered while probing comes at once, slightly ahead of the clock: no added latency); a finite
file served over HTTP(S) is paced on the clock so it plays in real time.
Damaged packets are skipped and counted (live streams often start mid-GOP).
"""

from __future__ import annotations

import logging

from omnizip_stream.clock import Clock
from omnizip_stream.credentials import redact_url
from omnizip_stream.sources._av import Decoder, ReadError
from omnizip_stream.sources._avopen import av_reason, import_av, open_within
from omnizip_stream.sources._buffer import ThreadedSource
from omnizip_stream.sources.base import AudioChunk, MediaError, SourceError, StreamCounters
from omnizip_stream.windowing import FrameSampler

logger = logging.getLogger(__name__)

URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp")


def redact(url: str) -> str:
    """``url`` with any ``user:password@`` removed (for logs and errors); see :func:`redact_url`."""
    return redact_url(url)


class UrlSource(ThreadedSource):
    """A network stream as a live source.

    Args:
        url: ``rtsp://``, ``http(s)://``, ``udp://``, ``tcp://`` ... (anything FFmpeg's protocols open).
        fps / max_side: video sampling and decode-time scaling, as for files.
        attempts: consecutive failed connection attempts before giving up with :class:`SourceError`.
        backoff_s / backoff_max_s: first retry delay and its cap (doubling in between).
        open_timeout_s / read_timeout_s: how long to wait for the server to answer / for data.
        options: extra FFmpeg options (merged over the defaults for the scheme).
        clock / session_t0 / counters: shared session objects.
    """

    def __init__(
        self,
        url: str,
        *,
        fps: float | None = 2.0,
        max_side: int | None = None,
        attempts: int = 5,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        open_timeout_s: float = 5.0,
        read_timeout_s: float = 5.0,
        options: dict[str, str] | None = None,
        clock: Clock | None = None,
        session_t0: float | None = None,
        counters: StreamCounters | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.url = url
        super().__init__(redact(url), live=True, counters=counters, clock=clock, session_t0=session_t0,
                         maxsize=64)
        self.fps = fps
        self.max_side = max_side
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.timeout = (open_timeout_s, read_timeout_s)
        scheme = url.split("://", 1)[0].lower()
        defaults: dict[str, str] = {}
        if scheme in ("rtsp", "rtsps"):
            defaults["rtsp_transport"] = "tcp"
        if scheme in ("udp", "tcp", "rtsp", "rtsps", "rtp", "srt"):
            defaults["fflags"] = "nobuffer"
            defaults["analyzeduration"] = "1000000"  # 1 s: a stream that joins mid-GOP has no video parameters until its keyframe
        self.options = {**defaults, **(options or {})}
        self._sampler = FrameSampler(fps)
        self._decoder: Decoder | None = None
        self._last_end_s = 0.0

    def _connect_once(self) -> Decoder:
        av = import_av()
        deadline_s = sum(self.timeout)  # FFmpeg's own timeouts first; this catches a protocol that ignores them
        try:
            container = open_within(
                lambda: av.open(self.url, mode="r", options=dict(self.options), timeout=self.timeout),
                deadline_s, f"no answer within {deadline_s:g} s", discard=lambda c: c.close())
        except av.error.ExitError as exc:  # FFmpeg's interrupt: the server accepted but sent no media in time
            raise SourceError(f"no media within {self.timeout[0]:g} s of connecting") from exc
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(av_reason(exc)) from exc
        try:
            # Map the stream's start to "now" on the session clock (never before what was already emitted).
            offset = max(self.session_time(), self._last_end_s)
            return Decoder(container, name=self.name, max_side=self.max_side, time_offset_s=offset,
                           strict=False, sampler=self._sampler, counters=self.counters, origin_first=True)
        except MediaError:
            container.close()
            raise

    def _connect(self) -> Decoder:
        """Connect, retrying with exponential backoff; raises a one-line SourceError after ``attempts``."""
        delay = self.backoff_s
        reason = "no answer"
        for attempt in range(1, self.attempts + 1):
            if self._stop.is_set():
                raise SourceError(f"{self.name}: stopped")
            try:
                return self._connect_once()
            except MediaError:
                raise
            except SourceError as exc:
                reason = exc.message
                logger.warning("%s: connection attempt %d/%d failed: %s", self.name, attempt, self.attempts, reason)
            if attempt < self.attempts:
                if self.clock.sleep(delay, self._stop):
                    raise SourceError(f"{self.name}: stopped")
                delay = min(delay * 2, self.backoff_max_s)
        raise SourceError(f"{self.name}: no usable stream after {self.attempts} attempts ({reason})")

    def _open(self) -> None:
        self._decoder = self._connect()
        d = self._decoder
        self.kinds = frozenset(k for k, on in (("audio", d.has_audio), ("video", d.has_video)) if on)

    def _finite_resource(self, decoder: Decoder) -> bool:
        """Tell whether this is a finite HTTP(S) resource (a file: paced, and its EOF is the end)."""
        scheme = self.url.split("://", 1)[0].lower()
        return scheme in ("http", "https") and decoder.duration_s is not None

    def _finite(self, decoder: Decoder) -> bool:
        """Tell whether a finite resource was played to its end (EOF then is the end, not a lost stream)."""
        dur = decoder.duration_s
        return (self._finite_resource(decoder) and dur is not None
                and decoder.end_s - decoder.time_offset_s >= dur - 1.0)

    def _run(self) -> None:
        decoder = self._decoder
        assert decoder is not None
        empty_connections = 0  # connections that delivered nothing count as failed attempts
        while True:
            reason = "the stream ended"
            got_media = False
            try:
                pace = self._finite_resource(decoder)
                for item in decoder:
                    got_media = True
                    if pace:
                        due = item.end_s if isinstance(item, AudioChunk) else item.pts_s
                        if not self._sleep_until_session(due):
                            return
                    if not self._emit(item):
                        return
            except ReadError as exc:
                reason = exc.message
            finally:
                self._last_end_s = max(self._last_end_s, decoder.end_s)
                decoder.container.close()
            if self._stop.is_set() or self._finite(decoder):
                return
            empty_connections = 0 if got_media else empty_connections + 1
            if empty_connections >= self.attempts:
                raise SourceError(f"{self.name}: no media after {self.attempts} attempts ({reason})")
            logger.warning("%s: stream lost (%s); reconnecting", self.name, reason)
            if not got_media and self.clock.sleep(self.backoff_s * 2 ** (empty_connections - 1), self._stop):
                return
            decoder = self._decoder = self._connect()
            self.counters.add(source_restarts=1)
