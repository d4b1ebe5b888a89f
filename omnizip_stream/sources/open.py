"""The single entry point: a source spec string in, an async iterator of windows out.

Spec grammar (``omnizip stream --source SPEC``)::

    SPEC := "camera" [":" DEVICE] ["+mic"]     camera only, or camera + default/--mic microphone
          | "mic" ["+camera"]                  microphone only (or the same as camera+mic)
          | "file:" PATH                       any file PyAV decodes (an existing bare path works too)
          | URL                                rtsp:// rtsps:// rtmp:// http(s):// udp:// tcp:// srt:// rtp://
          | "synthetic" [":" KEY=VALUE {"," KEY=VALUE}]   keys: seed size rate tone beep_every_s beep_s
                                                          amplitude audio video
          | "webrtc:" PEER_ID                  a browser's camera + microphone (the web page's offer)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from omnizip_stream.clock import Clock, MonotonicClock
from omnizip_stream.credentials import redact_url
from omnizip_stream.sources._avopen import OPEN_TIMEOUT_S
from omnizip_stream.sources.base import MediaError, Source, SourceError, StreamCounters
from omnizip_stream.sources.stream import WindowStream
from omnizip_stream.sources.url import URL_SCHEMES
from omnizip_stream.windowing import Windower, validate_window_s

logger = logging.getLogger(__name__)

SPEC_HELP = ("camera, camera+mic, mic, file:PATH, a URL (rtsp://, http(s)://, udp://, tcp://) "
             "or synthetic[:seed=N,size=WxH,...]")


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source spec.

    Attributes:
        kind: ``camera``, ``mic``, ``camera+mic``, ``file``, ``url``, ``synthetic`` or ``webrtc``.
        target: camera device, file path, URL or WebRTC peer id (None when not given).
        options: ``key=value`` options (synthetic).
    """

    kind: str
    target: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        """Devices and network streams are always live."""
        return self.kind in ("camera", "mic", "camera+mic", "url", "webrtc")


def parse_spec(spec: str) -> SourceSpec:
    """Parse a source spec (grammar in the module docstring).

    Raises:
        SourceError: an unknown or malformed spec (one line, with the accepted forms).
    """
    s = spec.strip()
    low = s.lower()
    if not s:
        raise SourceError(f"empty source spec: use {SPEC_HELP}")
    if low in ("mic", "microphone"):
        return SourceSpec("mic")
    if low in ("mic+camera", "camera+mic"):
        return SourceSpec("camera+mic")
    if low == "camera" or low.startswith("camera:"):
        device = s[len("camera:"):] if low.startswith("camera:") else ""
        with_mic = device.lower().endswith("+mic")
        device = device[: -len("+mic")] if with_mic else device
        return SourceSpec("camera+mic" if with_mic else "camera", device or None)
    if low.startswith("file:"):
        path = s[len("file:"):]
        if not path:
            raise SourceError("file: needs a path, e.g. file:clip.mp4")
        return SourceSpec("file", os.path.expanduser(path))
    if low.startswith("webrtc:"):
        peer_id = s[len("webrtc:"):]
        if not peer_id:
            raise SourceError("webrtc: needs a peer id, e.g. webrtc:browser-1a2b3c (made by the web page)")
        return SourceSpec("webrtc", peer_id)
    scheme, sep, _ = s.partition("://")
    if sep:
        if scheme.lower() in URL_SCHEMES:
            return SourceSpec("url", s)
        raise SourceError(f"unsupported URL scheme {scheme!r}: use one of {', '.join(URL_SCHEMES)}")
    if low == "synthetic" or low.startswith("synthetic:"):
        options: dict[str, str] = {}
        body = s[len("synthetic:"):] if ":" in s else ""
        for part in filter(None, (p.strip() for p in body.split(","))):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise SourceError(f"bad synthetic option {part!r}: use key=value, e.g. synthetic:seed=3")
            options[key.strip().lower()] = value.strip()
        from omnizip_stream.sources.synthetic import SyntheticParams

        SyntheticParams.from_options(options)  # validate now: a bad option is a one-line error
        return SourceSpec("synthetic", None, options)
    path = os.path.expanduser(s)
    if os.path.exists(path):  # a bare path: a regular file, or a FIFO / device node FFmpeg can read
        if os.path.isdir(path):
            raise MediaError(f"{s}: is a directory, not a media file")
        return SourceSpec("file", path)
    if _looks_like_path(s):
        raise MediaError(f"{s}: no such file")
    kind, colon, _ = s.partition(":")
    if colon and kind.isidentifier():
        raise SourceError(f"unknown source kind {kind!r} in {spec!r}: use {SPEC_HELP}")
    raise SourceError(f"unknown source {spec!r}: use {SPEC_HELP}")


def _looks_like_path(spec: str) -> bool:
    """Whether a spec that names nothing that exists was meant as a file (``media/nope.mp4``, ``clip.mkv``)."""
    if any(sep in spec for sep in ("/", "\\")) or spec.startswith((".", "~")):
        return True
    stem, dot, ext = spec.rpartition(".")
    return bool(dot and stem and ext.isalnum() and len(ext) <= 5)


def build_sources(
    spec: SourceSpec,
    *,
    fps: float,
    max_side: int | None,
    realtime: bool,
    loop: bool,
    mic_device: str | int | None,
    camera_device: str | None,
    camera_size: str | tuple[int, int] | None,
    strict_devices: bool,
    url_attempts: int,
    clock: Clock,
    session_t0: float,
    counters: StreamCounters,
    open_timeout_s: float = OPEN_TIMEOUT_S,
) -> list[Source]:
    """Construct (not start) the sources for ``spec``."""
    sources: list[Source] = []
    if spec.kind in ("camera", "camera+mic"):
        from omnizip_stream.sources.camera import CameraSource

        sources.append(CameraSource(camera_device or spec.target, size=camera_size, fps=fps, max_side=max_side,
                                    strict=strict_devices, open_timeout_s=open_timeout_s,
                                    clock=clock, session_t0=session_t0, counters=counters))
    if spec.kind in ("mic", "camera+mic"):
        from omnizip_stream.sources.mic import MicSource

        sources.append(MicSource(mic_device, strict=strict_devices, clock=clock, session_t0=session_t0,
                                 counters=counters))
    if spec.kind == "file":
        from omnizip_stream.sources.file import FileSource

        assert spec.target is not None
        sources.append(FileSource(spec.target, realtime=realtime, loop=loop, fps=fps, max_side=max_side,
                                  clock=clock, session_t0=session_t0, counters=counters,
                                  open_timeout_s=open_timeout_s))
    if spec.kind == "url":
        from omnizip_stream.sources.url import UrlSource

        assert spec.target is not None
        sources.append(UrlSource(spec.target, fps=fps, max_side=max_side, attempts=url_attempts, clock=clock,
                                 session_t0=session_t0, counters=counters, open_timeout_s=open_timeout_s))
    if spec.kind == "synthetic":
        from omnizip_stream.sources.synthetic import SyntheticParams, SyntheticSource

        params = SyntheticParams.from_options(spec.options)
        if max_side is not None and max(params.width, params.height) > max_side:
            scale = max_side / max(params.width, params.height)
            params = dataclasses.replace(params, width=max(8, round(params.width * scale)),
                                         height=max(8, round(params.height * scale)))
        sources.append(SyntheticSource(params, realtime=realtime, fps=fps, clock=clock, session_t0=session_t0,
                                       counters=counters))
    if spec.kind == "webrtc":
        from omnizip_stream.sources.webrtc import build_webrtc_sources

        assert spec.target is not None
        sources.extend(build_webrtc_sources(spec.target, fps=fps, max_side=max_side, clock=clock,
                                            session_t0=session_t0))
    return sources


@contextlib.asynccontextmanager
async def open_windows(
    spec: str,
    *,
    window_s: float = 2.0,
    fps: float = 2.0,
    chunk_s: float | None = None,
    mic_device: str | int | None = None,
    camera_device: str | None = None,
    camera_size: str | tuple[int, int] | None = None,
    realtime: bool = True,
    loop: bool = False,
    max_side: int | None = 640,
    duration_s: float | None = None,
    max_queue_windows: int = 4,
    max_latency_s: float = 0.75,
    strict_devices: bool = True,
    url_attempts: int = 5,
    clock: Clock | None = None,
    open_timeout_s: float = OPEN_TIMEOUT_S,
) -> AsyncIterator[WindowStream]:
    """Open the sources named by ``spec`` and yield an async iterator of :class:`~omnizip_stream.window.Window`.

    Usage::

        async with open_windows("synthetic", duration_s=10) as windows:
            async for w in windows:          # w.audio [32000] float32, w.frames [4, H, W, 3] uint8
                ...
            print(windows.counters.snapshot())

    Args:
        spec: source spec (see :data:`SPEC_HELP` and the module docstring).
        window_s: window length in seconds, a positive multiple of ``chunk_s``.
        fps: video frames per second kept, sampled by timestamp.
        chunk_s: the model's chunk (``ModelSpec.seconds_per_chunk``); None: not checked here (the engine checks it).
        mic_device: microphone (PortAudio index or name) for ``mic`` / ``camera+mic``.
        camera_device: camera device (``/dev/video2``, ``0``, ``video=Name``); platform default when None.
        camera_size: camera capture size (``"640x480"``); device default when None.
        realtime: files and synthetic media paced in real time (live) or as fast as consumed.
        loop: replay a file forever.
        max_side: frames scaled at decode so the longer side is at most this many pixels (None: native).
        duration_s: stop after the windows covering this much stream time.
        max_queue_windows: windows queued for the consumer before the sources wait (bounded buffering; a
            live consumer sheds video by the session's drop policy, see ``StreamSession.push_window``).
        max_latency_s: how long a live window waits for late media after its end.
        strict_devices: a device that cannot be opened at start is an error (else: warn and retry).
        url_attempts: connection attempts before a URL source gives up.
        clock: session clock (monotonic by default).
        open_timeout_s: how long opening a file, URL or camera may take (a FIFO nobody writes to, a
            stalled mount or a silent server is a one-line error after this long, not a hang).

    Yields:
        A started :class:`WindowStream`; its ``counters`` count every drop.

    Raises:
        SourceError: bad spec, device missing (the message lists what exists), file unusable
            (:class:`~omnizip_stream.sources.base.MediaError`), URL not answering.
        ValueError: bad numeric arguments.
    """
    validate_window_s(window_s, chunk_s)
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be positive, got {fps}")
    if max_side is not None and max_side < 16:
        raise ValueError(f"max_side must be >= 16 pixels, got {max_side}")
    if not (open_timeout_s > 0 and math.isfinite(open_timeout_s)):
        raise ValueError(f"open_timeout_s must be positive, got {open_timeout_s}")
    parsed = parse_spec(spec)
    clock = clock if clock is not None else MonotonicClock()
    counters = StreamCounters()
    live = parsed.live or realtime
    session_t0 = clock.now()
    sources = build_sources(parsed, fps=fps, max_side=max_side, realtime=realtime, loop=loop,
                            mic_device=mic_device, camera_device=camera_device, camera_size=camera_size,
                            strict_devices=strict_devices, url_attempts=url_attempts, clock=clock,
                            session_t0=session_t0, counters=counters, open_timeout_s=open_timeout_s)
    started: list[Source] = []
    try:
        for src in sources:
            await src.start()
            started.append(src)
    except BaseException:
        for src in started + [s for s in sources if s not in started]:
            with contextlib.suppress(Exception):
                await src.aclose()
        raise
    kinds = frozenset().union(*(s.kinds for s in sources))
    windower = Windower(window_s=window_s, fps=fps, chunk_s=chunk_s, has_audio="audio" in kinds,
                        has_video="video" in kinds, duration_s=duration_s, counters=counters)
    stream = WindowStream(sources, windower, live=live, clock=clock, session_t0=session_t0,
                          max_latency_s=max_latency_s, max_queue_windows=max_queue_windows)
    logger.info("opened %s: %s, window %.1f s, %g fps, %s", redact_url(spec), "+".join(sorted(kinds)), window_s, fps,
                "live" if live else "as fast as consumed")
    stream.start()
    try:
        yield stream
    finally:
        await stream.aclose()
