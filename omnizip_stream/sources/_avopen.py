"""Opening media with PyAV: lazy import, one-line reasons, and a deadline on every open.

FFmpeg's own timeouts do not cover a blocking ``open(2)`` (a FIFO nobody writes to) or a stalled read
while probing, so :func:`open_within` runs the open in a daemon thread with a deadline; files, URLs and
cameras all open through it.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from omnizip_stream.sources.base import MediaError, SourceError, one_line

logger = logging.getLogger(__name__)

T = TypeVar("T")
OPEN_TIMEOUT_S = 10.0  # opening a file, URL or device (probing included) may take this long


def import_av() -> Any:
    """Import PyAV lazily, turning its absence into a one-line :class:`SourceError`."""
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is installed in every test environment
        raise SourceError(
            f"PyAV is required for media input: pip install 'omnizip-stream[stream]' ({one_line(exc)})"
        ) from exc
    return av


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


def open_within(fn: Callable[[], T], timeout_s: float, message: str, *,
                unblock: Callable[[], None] | None = None, discard: Callable[[T], None] | None = None,
                error: type[SourceError] = SourceError) -> T:
    """Run the blocking open ``fn()`` in a daemon thread and give up after ``timeout_s``.

    FFmpeg's own timeouts do not cover a blocking ``open(2)`` (a FIFO without a writer) or a stalled
    read while probing, so the deadline is kept here. An abandoned open that finishes later has its
    result passed to ``discard`` (e.g. closing the container).

    Args:
        fn: the blocking open.
        timeout_s: deadline in seconds.
        message: the one-line error when the deadline passes.
        unblock: called on timeout to wake the blocked thread (e.g. open a FIFO's write end once).
        discard: releases a result that arrives after the deadline.
        error: the exception class raised on timeout (:class:`MediaError` for files).

    Returns:
        What ``fn`` returned; its exceptions propagate unchanged.
    """
    box: dict[str, Any] = {}
    lock = threading.Lock()
    done = threading.Event()

    def run() -> None:
        try:
            value = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc
        else:
            with lock:
                late = box.get("abandoned", False)
                box["value"] = value
            if late and discard is not None:
                try:
                    discard(value)
                except Exception:  # releasing an abandoned open must never raise anywhere
                    logger.debug("discarding a late open failed", exc_info=True)
        finally:
            done.set()

    threading.Thread(target=run, name="open-with-deadline", daemon=True).start()
    if not done.wait(timeout_s):
        with lock:
            box["abandoned"] = True
            finished = "value" in box
        if not finished:
            if unblock is not None:
                try:
                    unblock()
                except OSError:
                    pass
            raise error(message)
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _unblock_fifo(path: str) -> Callable[[], None]:
    """Return a function that wakes a reader blocked opening the FIFO ``path`` (it then reads EOF)."""
    def unblock() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    return unblock


def open_file(path: str | os.PathLike[str], *, open_timeout_s: float = OPEN_TIMEOUT_S) -> Any:
    """Open a local media file for reading.

    Args:
        path: file path.
        open_timeout_s: how long opening (and probing) may take; a FIFO nobody writes to or a stalled
            mount is an error after this long instead of a hang.

    Returns:
        A PyAV input container.

    Raises:
        MediaError: missing file, a directory, unreadable, not media, corrupt/truncated, or opening
            stalled beyond ``open_timeout_s``.
    """
    av = import_av()
    p = os.fspath(path)
    if not os.path.exists(p):
        raise MediaError(f"{p}: no such file")
    if os.path.isdir(p):
        raise MediaError(f"{p}: is a directory, not a media file")
    fifo = stat.S_ISFIFO(os.stat(p).st_mode)
    if fifo:
        why = (f"{p}: a named pipe (FIFO) that gave no media within {open_timeout_s:g} s: start the "
               "program that writes to it first, or pass a regular file")
    else:
        why = (f"{p}: opening stalled for {open_timeout_s:g} s (a network mount or device that does "
               "not answer?)")
    try:
        return open_within(lambda: av.open(p, mode="r"), open_timeout_s, why,
                           unblock=_unblock_fifo(p) if fifo else None, discard=lambda c: c.close(),
                           error=MediaError)
    except av.error.InvalidDataError as exc:
        raise MediaError(f"{p}: cannot be read: {_sniff(p)} ({av_reason(exc)})") from exc
    except av.error.PermissionError as exc:
        raise MediaError(f"{p}: permission denied") from exc
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"{p}: cannot be opened: {av_reason(exc)}") from exc
