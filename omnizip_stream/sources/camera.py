"""Camera capture through PyAV's libavdevice: v4l2 on Linux, avfoundation on macOS, dshow on Windows.

The camera is opened in :meth:`CameraSource.start`; if it cannot be opened there the error lists the
cameras that exist. Once running, a lost camera (unplugged, driver error, no frame for 5 s) is
reopened with exponential backoff for as long as the session runs; meanwhile the windower produces
audio-only windows from the microphone. Frame times are the device's timestamps, anchored to the
session clock at each (re)open.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from omnizip_stream.clock import Clock
from omnizip_stream.sources._av import Decoder, ReadError
from omnizip_stream.sources._avopen import OPEN_TIMEOUT_S, av_reason, import_av, open_within
from omnizip_stream.sources._buffer import ThreadedSource
from omnizip_stream.sources.base import SourceError, StreamCounters
from omnizip_stream.sources.devices import camera_backend, list_devices
from omnizip_stream.windowing import FrameSampler

logger = logging.getLogger(__name__)


def parse_size(size: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"640x480"`` or ``(640, 480)`` -> ``(640, 480)``; raises ValueError on anything else."""
    if size is None:
        return None
    if isinstance(size, str):
        ws, sep, hs = size.lower().partition("x")
        if not sep or not ws.isdigit() or not hs.isdigit():
            raise ValueError(f"camera size must look like 640x480, got {size!r}")
        size = (int(ws), int(hs))
    width, height = int(size[0]), int(size[1])
    if width <= 0 or height <= 0:
        raise ValueError(f"camera size must be positive, got {width}x{height}")
    return width, height


class CameraSource(ThreadedSource):
    """A local camera as a live video source.

    Args:
        device: ``/dev/videoN`` (Linux), an index or name (macOS), ``video=Name`` or a name (Windows);
            the platform default when None.
        size: capture size ``(width, height)`` or ``"WxH"``; the device default when None.
        framerate: capture rate requested from the device (30 on macOS when None, which needs one).
        input_format: v4l2 pixel/compressed format to request (e.g. ``"mjpeg"``).
        fps / max_side: frames kept per second and decode-time scaling.
        backoff_s / backoff_max_s: reopen delays after the camera is lost.
        strict: a camera that cannot be opened at start raises :class:`SourceError` (listing the
            cameras); with False it is treated as lost: warn and keep retrying.
        open_timeout_s: opening a device that does not answer fails after this long.
        clock / session_t0 / counters: shared session objects.

    Raises (from :meth:`start`):
        SourceError: the camera does not exist or cannot be opened; the message lists the cameras.
    """

    def __init__(
        self,
        device: str | None = None,
        *,
        size: str | tuple[int, int] | None = None,
        framerate: float | None = None,
        input_format: str | None = None,
        fps: float | None = 2.0,
        max_side: int | None = None,
        backoff_s: float = 0.5,
        backoff_max_s: float = 10.0,
        strict: bool = True,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        clock: Clock | None = None,
        session_t0: float | None = None,
        counters: StreamCounters | None = None,
    ) -> None:
        self.format, default = camera_backend()
        self.open_timeout_s = open_timeout_s
        if device is not None and self.format == "v4l2" and device.isdigit():
            device = f"/dev/video{device}"  # camera:1 means /dev/video1 on Linux
        self.device = device or default
        self.strict = strict
        super().__init__(f"camera {self.device or '(default)'}", live=True, counters=counters, clock=clock,
                         session_t0=session_t0, maxsize=32)
        self.kinds = frozenset({"video"})
        self.size = parse_size(size)
        self.framerate = framerate
        self.input_format = input_format
        self.fps = fps
        self.max_side = max_side
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._sampler = FrameSampler(fps)
        self._decoder: Decoder | None = None
        self._last_end_s = 0.0

    def _url_and_options(self) -> tuple[str, dict[str, str]]:
        opts: dict[str, str] = {}
        if self.size is not None:
            opts["video_size"] = f"{self.size[0]}x{self.size[1]}"
        framerate = self.framerate if self.framerate is not None else (30 if self.format == "avfoundation" else None)
        if framerate is not None:
            opts["framerate"] = f"{framerate:g}"
        url = self.device
        if self.format == "v4l2" and self.input_format:
            opts["input_format"] = self.input_format
        elif self.format == "dshow":
            opts.setdefault("rtbufsize", "64M")
            if not url:
                cams = list_devices().cameras
                if not cams:
                    raise SourceError(f"no camera found; {list_devices().describe_cameras()}")
                url = cams[0].id
            elif not url.startswith("video="):
                url = f"video={url}"
        return url, opts

    def _open_once(self) -> Decoder:
        av = import_av()
        if self.format == "v4l2" and sys.platform.startswith("linux") and not os.path.exists(self.device):
            raise SourceError(f"camera {self.device} not found; {list_devices().describe_cameras()}")
        url, opts = self._url_and_options()
        try:
            container: Any = open_within(
                lambda: av.open(url, mode="r", format=self.format, options=opts, timeout=(self.open_timeout_s, 5.0)),
                self.open_timeout_s + 5.0, f"camera {self.device} gave no frame within {self.open_timeout_s + 5.0:g} s "
                "(in use by another program, or a driver that does not answer?)", discard=lambda c: c.close())
        except av.error.ExitError as exc:  # FFmpeg's interrupt: the device gave nothing in time
            raise SourceError(f"camera {self.device} gave no frame within {self.open_timeout_s:g} s (in use by "
                              "another program, or a driver that does not answer?)") from exc
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise SourceError(f"cannot open camera {self.device}: {av_reason(exc)}; "
                              f"{list_devices().describe_cameras()}") from exc
        try:
            offset = max(self.session_time(), self._last_end_s)
            return Decoder(container, name=self.name, max_side=self.max_side, time_offset_s=offset, strict=False,
                           sampler=self._sampler, counters=self.counters, want_audio=False, origin_first=True)
        except SourceError:
            container.close()
            raise

    def _open(self) -> None:
        try:
            self._decoder = self._open_once()
        except SourceError as exc:
            if self.strict:
                raise
            logger.warning("%s (audio-only windows until it appears, retrying)", exc.message)

    def _run(self) -> None:
        decoder: Decoder | None = self._decoder
        delay = self.backoff_s
        warned = decoder is None  # not strict and missing at start: already warned
        while not self._stop.is_set():
            if decoder is None:
                try:
                    decoder = self._open_once()
                except SourceError as exc:
                    logger.debug("%s: reopen failed: %s", self.name, exc.message)
                    if self.clock.sleep(delay, self._stop):
                        return
                    delay = min(delay * 2, self.backoff_max_s)
                    continue
                logger.warning("%s: camera is back", self.name)
                self.counters.add(source_restarts=1)
                delay, warned = self.backoff_s, False
            reason = "no more frames"
            try:
                for item in decoder:
                    if not self._emit(item):
                        return
            except ReadError as exc:
                reason = exc.message
            finally:
                self._last_end_s = max(self._last_end_s, decoder.end_s)
                decoder.container.close()
                decoder = None
            if self._stop.is_set():
                return
            if not warned:
                logger.warning("%s: camera lost (%s); audio-only windows until it is back, retrying", self.name, reason)
                warned = True
