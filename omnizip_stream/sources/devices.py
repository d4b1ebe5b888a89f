"""What cameras and microphones exist, for ``--list-devices`` and for "device not found" errors.

Cameras: ``/dev/video*`` on Linux (names from sysfs); on macOS (avfoundation) and Windows (dshow) the
list FFmpeg prints for ``list_devices`` is captured and parsed. Microphones: PortAudio input devices
through sounddevice (imported lazily: without the PortAudio library there are simply none, with a note).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from omnizip_stream.sources.base import SourceError, one_line

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceInfo:
    """One capture device.

    Attributes:
        id: what to pass as the device (``/dev/video0``, ``0``, ``video=Name``, a PortAudio index).
        name: human-readable name.
        default: whether it is the system default.
    """

    id: str
    name: str
    default: bool = False

    def describe(self) -> str:
        """``id (name)``, plus ``, default`` for the default device."""
        label = self.id if self.name in ("", self.id) else f"{self.id} ({self.name})"
        return label + (" [default]" if self.default else "")


@dataclass(frozen=True)
class DeviceList:
    """Cameras and microphones found, with notes on why a list may be empty."""

    cameras: tuple[DeviceInfo, ...] = ()
    microphones: tuple[DeviceInfo, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def describe_cameras(self) -> str:
        """One line: the cameras that exist (or ``none found``)."""
        return "cameras: " + (", ".join(d.describe() for d in self.cameras) or "none found")

    def describe_microphones(self) -> str:
        """One line: the microphones that exist (or ``none found``)."""
        return "microphones: " + (", ".join(d.describe() for d in self.microphones) or "none found")

    def describe(self) -> str:
        """One line with both lists and the notes."""
        text = f"{self.describe_cameras()}; {self.describe_microphones()}"
        return text + (f" ({'; '.join(self.notes)})" if self.notes else "")


def camera_backend(platform: str | None = None) -> tuple[str, str]:
    """``(FFmpeg input format, default device)`` for capture on ``platform`` (``sys.platform`` by default)."""
    platform = platform or sys.platform
    if platform.startswith("linux"):
        return "v4l2", "/dev/video0"
    if platform == "darwin":
        return "avfoundation", "0"
    if platform.startswith(("win32", "cygwin")):
        return "dshow", ""  # the first listed camera is used (see CameraSource)
    return "v4l2", "/dev/video0"


def _ffmpeg_listing(fmt: str, url: str) -> list[str]:
    """Log lines FFmpeg prints when asked to list the devices of input format ``fmt``."""
    from omnizip_stream.sources._avopen import import_av

    av = import_av()
    import av.logging as avlog

    previous = avlog.get_level()
    avlog.set_level(avlog.INFO)
    try:
        with avlog.Capture() as logs:
            try:
                av.open(url, format=fmt, options={"list_devices": "true"}).close()
            except Exception:  # listing always "fails" to open; the list is in the log
                pass
    finally:
        avlog.set_level(previous)
    return [str(entry[2]) for entry in logs]


def _list_cameras() -> tuple[list[DeviceInfo], list[str]]:
    fmt, _ = camera_backend()
    if sys.platform == "darwin" or fmt == "avfoundation":
        out: list[DeviceInfo] = []
        video_section = False
        for line in _ffmpeg_listing("avfoundation", ""):
            if "video devices" in line.lower():
                video_section = True
            elif "audio devices" in line.lower():
                video_section = False
            elif video_section and (m := re.match(r"\s*\[(\d+)\]\s*(.+)", line)):
                out.append(DeviceInfo(m.group(1), m.group(2).strip(), default=not out))
        return out, []
    if fmt == "dshow":
        out = []
        for line in _ffmpeg_listing("dshow", "dummy"):
            if (m := re.search(r'"([^"]+)"\s*\(video\)', line)):
                out.append(DeviceInfo(f"video={m.group(1)}", m.group(1), default=not out))
        return out, []
    out = []
    for path in sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p)):
        name = ""
        try:
            with open(f"/sys/class/video4linux/{os.path.basename(path)}/name") as fh:
                name = fh.read().strip()
        except OSError:
            pass
        out.append(DeviceInfo(path, name, default=path == "/dev/video0"))
    notes = [] if out else ["no /dev/video* device nodes"]
    return out, notes


def import_sounddevice() -> object:
    """Import sounddevice lazily; a missing PortAudio (an ``OSError``) becomes a one-line SourceError."""
    try:
        import sounddevice
    except OSError as exc:
        raise SourceError(
            f"microphone input needs the PortAudio library (Debian/Ubuntu: apt-get install libportaudio2): {one_line(exc)}"
        ) from exc
    except ImportError as exc:
        raise SourceError(f"microphone input needs sounddevice: pip install 'omnizip-stream[stream]' ({exc})") from exc
    return sounddevice


def _list_microphones(refresh: bool = True) -> tuple[list[DeviceInfo], list[str]]:
    from omnizip_stream.sources.mic import portaudio

    try:
        sd = portaudio(refresh=refresh)
        devices = sd.query_devices()  # type: ignore[attr-defined]
        default_in = sd.default.device[0]  # type: ignore[attr-defined]
    except SourceError as exc:
        return [], [exc.message]
    except Exception as exc:  # PortAudio errors while enumerating
        return [], [f"PortAudio: {one_line(exc)}"]
    out = []
    for d in devices:
        if d["max_input_channels"] > 0:
            out.append(DeviceInfo(str(d["index"]), str(d["name"]), default=d["index"] == default_in))
    return out, []


def list_devices() -> DeviceList:
    """Cameras and microphones present on this machine.

    Returns:
        A :class:`DeviceList`; empty lists come with a note saying why where that is known.
    """
    notes: list[str] = []
    try:
        cams, cam_notes = _list_cameras()
    except Exception as exc:  # listing must never be what fails
        cams, cam_notes = [], [f"camera listing failed: {one_line(exc)}"]
    mics, mic_notes = _list_microphones()
    notes.extend(cam_notes + mic_notes)
    return DeviceList(tuple(cams), tuple(mics), tuple(notes))


def check_devices(kind: str, *, camera_device: str | None = None, mic_device: str | int | None = None) -> None:
    """Fail fast (before a model loads) when a requested camera or microphone does not exist.

    Only cheap checks: the v4l2 device node on Linux, and PortAudio's view of the input device.
    Other platforms are checked when the source opens.

    Args:
        kind: the parsed spec's kind (``camera``, ``mic``, ``camera+mic``; others are not checked).
        camera_device: the camera device (``/dev/video2``, ``2``) or None for the default.
        mic_device: the microphone (index or name) or None for the default input.

    Raises:
        SourceError: with the list of the devices that exist.
    """
    if kind in ("camera", "camera+mic"):
        fmt, default = camera_backend()
        device = camera_device or default
        if fmt == "v4l2" and device.isdigit():
            device = f"/dev/video{device}"
        if fmt == "v4l2" and sys.platform.startswith("linux") and not os.path.exists(device):
            raise SourceError(f"camera {device} not found; {list_devices().describe_cameras()}")
    if kind in ("mic", "camera+mic"):
        from omnizip_stream.sources.mic import portaudio

        sd: Any = portaudio(refresh=True)
        try:
            sd.query_devices(mic_device, "input")
        except Exception as exc:
            what = f"microphone {mic_device!r} not found" if mic_device is not None else "no default microphone"
            raise SourceError(f"{what} ({one_line(exc)}); {list_devices().describe_microphones()}") from None
