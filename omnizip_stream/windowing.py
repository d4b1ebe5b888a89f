"""Windower: align timestamped audio and video into fixed :class:`~omnizip_stream.window.Window` objects.

This is the synchronous core (no asyncio, no I/O): feed it :class:`AudioChunk` / :class:`VideoFrame`
items in session time, get back finished windows. Window ``k`` spans ``[k * window_s, (k+1) * window_s)``
and is on the model's grid: exactly ``window_s * 16000`` audio samples (zero-padded where audio was
missing and counted) or none at all when no audio arrived for it, and exactly ``window_s * fps`` video
frames at ``t0 + k / fps`` (see :func:`on_grid`, the one place frames are put on the grid and audio is
padded) or none when no frame arrived for it. The engine takes windows as they are. A window is emitted once every live kind has passed its
end, or when :meth:`Windower.close_until` forces it (the live deadline), or at the end of the media.
The async driver that pulls sources into it is ``omnizip_stream.sources.stream``; shedding video when the
model falls behind real time is the session's (``omnizip_stream.server.scheduler``), never the windowing's.
"""

from __future__ import annotations

import logging
import math
from collections import deque

import numpy as np

from omnizip_stream.sources.base import SAMPLE_RATE_HZ, AudioChunk, StreamCounters, VideoFrame
from omnizip_stream.window import Window

logger = logging.getLogger(__name__)

__all__ = ["AudioTimeline", "FrameSampler", "Windower", "stack_frames", "validate_window_s"]

_EPS = 1e-6


def validate_window_s(window_s: float, chunk_s: float | None = None) -> int:
    """Check that ``window_s`` is a positive whole number of ``chunk_s`` chunks; returns the chunk count.

    ``chunk_s=None``: the model is not known here (the engine checks its chunks: ``StreamConfig.for_model``),
    so the window is one chunk and only needs to be positive and whole audio samples.

    Raises:
        ValueError: ``window_s`` is not a positive multiple of ``chunk_s``.
    """
    if chunk_s is None:
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        chunk_s = window_s
    if not chunk_s > 0:
        raise ValueError(f"chunk_s must be positive, got {chunk_s}")
    n = round(window_s / chunk_s) if window_s > 0 else 0
    if n < 1 or abs(n * chunk_s - window_s) > 1e-9:
        raise ValueError(f"window_s must be a positive multiple of the model's {chunk_s:g}-s chunk, got {window_s}")
    if abs(window_s * SAMPLE_RATE_HZ - round(window_s * SAMPLE_RATE_HZ)) > 1e-6:
        raise ValueError(f"window_s * {SAMPLE_RATE_HZ} must be a whole number of samples, got {window_s}")
    return n


class FrameSampler:
    """Keep video frames at ``fps`` by timestamp on a grid anchored at session time 0.

    A frame at time ``t`` is kept when it is the first frame at or after the next grid point
    ``k / fps`` (the rule :func:`on_grid` applies per slot); frames before 0 are pre-roll and never kept. Applying it twice keeps the same frames
    (idempotent), so sources may sample early (to skip converting unused frames) and the windower again.

    Args:
        fps: frames per second to keep; None keeps every frame.
    """

    def __init__(self, fps: float | None) -> None:
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = fps
        self._next_t = 0.0

    def accept(self, t_s: float) -> bool:
        """Whether to keep the frame at session time ``t_s`` (updates the state when kept)."""
        if t_s < -_EPS:
            return False
        if self.fps is None:
            return True
        if t_s + _EPS < self._next_t:
            return False
        self._next_t = (math.floor(t_s * self.fps + _EPS) + 1) / self.fps
        return True


class AudioTimeline:
    """16 kHz mono audio placed on an absolute sample axis (sample ``i`` is at ``i / 16000`` s).

    Blocks whose start is within ``tolerance_s`` of the previous end are joined exactly; a later start
    leaves a gap (zeros when taken); an earlier start overlaps and its head is trimmed. Samples before
    what was already taken are late: discarded and counted (samples before time 0 are pre-roll and
    discarded silently).

    Args:
        counters: where late samples are counted.
        tolerance_s: jitter absorbed when joining consecutive blocks.
    """

    def __init__(self, counters: StreamCounters | None = None, tolerance_s: float = 0.02) -> None:
        self.counters = counters if counters is not None else StreamCounters()
        self.tolerance = round(tolerance_s * SAMPLE_RATE_HZ)
        self._segments: deque[tuple[int, np.ndarray]] = deque()
        self._end: int | None = None
        self.taken_index = 0

    @property
    def end_index(self) -> int:
        """Absolute index just after the last sample received (0 before any)."""
        return 0 if self._end is None else self._end

    def add(self, pts_s: float, samples: np.ndarray) -> None:
        """Place ``samples`` (``[n]`` float32, 16 kHz) starting at session time ``pts_s``."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        start = round(pts_s * SAMPLE_RATE_HZ)
        if self._end is not None:
            if abs(start - self._end) <= self.tolerance or start < self._end:
                x = x[max(0, self._end - start):]
                start = self._end
        floor = self.taken_index
        if start < floor:
            cut = min(floor - start, x.shape[0])
            late = cut - max(0, min(cut, -start))  # the part at times >= 0
            if late > 0:
                self.counters.add(audio_late_samples=late)
                logger.warning("audio arrived %.2f s late (after its window was emitted); %d samples dropped",
                               (floor - start) / SAMPLE_RATE_HZ, late)
            x, start = x[cut:], start + cut
        if x.shape[0] == 0:
            return
        self._segments.append((start, x))
        self._end = start + x.shape[0]

    def take(self, start: int, stop: int) -> tuple[np.ndarray, int]:
        """Remove and return samples ``[start, stop)`` with zeros where none arrived.

        Returns:
            ``(audio, n_real)``: ``[stop - start]`` float32 and how many samples were real.
        """
        out = np.zeros(stop - start, np.float32)
        n_real = 0
        while self._segments:
            s, x = self._segments[0]
            e = s + x.shape[0]
            lo, hi = max(s, start), min(e, stop)
            if hi > lo:
                out[lo - start:hi - start] = x[lo - s:hi - s]
                n_real += hi - lo
            if e <= stop:
                self._segments.popleft()
                continue
            if s < stop:
                self._segments[0] = (stop, x[stop - s:])
            break
        self.taken_index = max(self.taken_index, stop)
        return out, n_real


class Windower:
    """Turn timestamped items into windows (synchronous core).

    Args:
        window_s: window length, a positive multiple of ``chunk_s``.
        fps: video frames kept per second, by timestamp.
        chunk_s: the model's chunk length (``ModelSpec.seconds_per_chunk``), None when not checked here.
        has_audio / has_video: which kinds the sources deliver (a missing kind never holds windows back).
        duration_s: stop after the windows covering ``[0, duration_s)``; media at or after ``duration_s`` is
            left out (the last window is padded when ``duration_s`` is not a multiple of ``window_s``);
            None runs until the media ends.
        min_tail_s: the last, partial window is kept only with at least this much media in it.
        counters: shared counters.
    """

    def __init__(
        self,
        *,
        window_s: float = 2.0,
        fps: float = 2.0,
        chunk_s: float | None = None,
        has_audio: bool = True,
        has_video: bool = True,
        duration_s: float | None = None,
        min_tail_s: float = 0.5,
        counters: StreamCounters | None = None,
    ) -> None:
        validate_window_s(window_s, chunk_s)
        if duration_s is not None and not (duration_s > 0 and math.isfinite(duration_s)):
            raise ValueError(f"duration_s must be positive, got {duration_s}")
        if not has_audio and not has_video:
            raise ValueError("a windower needs audio or video")
        self.window_s = float(window_s)
        self.fps = float(fps)
        self.samples_per_window = round(window_s * SAMPLE_RATE_HZ)
        self.counters = counters if counters is not None else StreamCounters()
        self.min_tail_s = min_tail_s
        self.max_windows = None if duration_s is None else max(1, math.ceil(duration_s / window_s - 1e-9))
        self.end_s = math.inf if duration_s is None else float(duration_s)
        self.has_audio, self.has_video = has_audio, has_video
        self._sampler = FrameSampler(fps)
        self._timeline = AudioTimeline(self.counters)
        self._frames: list[VideoFrame] = []
        self._video_max_t = -math.inf
        self._audio_ended = not has_audio
        self._video_ended = not has_video
        self._max_pending_frames = 4 * max(1, math.ceil(window_s * fps)) + 16
        self.next_index = 0
        self.windows_emitted = 0
        self.done = False

    @property
    def media_end_s(self) -> float:
        """Session time just after the last media received (audio or video), 0 before any."""
        return max(0.0, self._timeline.end_index / SAMPLE_RATE_HZ, self._video_max_t)

    @property
    def next_t0_s(self) -> float:
        """Start time of the next window to be emitted."""
        return self.next_index * self.window_s

    # ---------------------------------------------------------------------------- input
    def add(self, item: AudioChunk | VideoFrame) -> list[Window]:
        """Feed one item; returns the windows it completed (possibly none)."""
        if self.done:
            return []
        if isinstance(item, AudioChunk):
            samples = item.samples
            if item.end_s > self.end_s:  # beyond the requested duration: left out, not a drop
                samples = samples[: max(0, round((self.end_s - item.pts_s) * SAMPLE_RATE_HZ))]
            self._timeline.add(item.pts_s, samples)
        elif item.pts_s < self.end_s - _EPS:
            self._add_video(item)
        else:
            self._video_max_t = max(self._video_max_t, item.pts_s)  # video has passed the end
        out = self._emit_ready()
        while len(self._frames) > self._max_pending_frames and not self.done:
            # Video far ahead of audio (a track that stopped, a skewed file): bounded buffering emits the
            # oldest window instead of holding (or dropping) frames; audio arriving for it later is counted late.
            self._emit_one(out)
        return out

    def _add_video(self, frame: VideoFrame) -> None:
        t = frame.pts_s
        self._video_max_t = max(self._video_max_t, t)
        if t < self.next_t0_s - _EPS:
            if t >= 0:
                self.counters.add(video_late=1)
            return
        if not self._sampler.accept(t):
            return
        self.counters.add(video_frames_in=1)
        self._frames.append(frame)

    def end(self, kinds: frozenset[str] | set[str]) -> list[Window]:
        """Mark ``kinds`` as ended; when everything has ended the remaining windows are flushed."""
        if "audio" in kinds:
            self._audio_ended = True
        if "video" in kinds:
            self._video_ended = True
        if self._audio_ended and self._video_ended:
            return self.flush()
        return self._emit_ready()

    def close_until(self, t_s: float) -> list[Window]:
        """Force out every window that ends at or before session time ``t_s`` (the live deadline)."""
        out: list[Window] = []
        while not self.done and (self.next_index + 1) * self.window_s <= t_s + _EPS:
            self._emit_one(out)
        return out + self._emit_ready()

    def flush(self) -> list[Window]:
        """End of all media: emit the remaining windows (the last, partial one per ``min_tail_s``)."""
        self._audio_ended = self._video_ended = True
        out = self._emit_ready()
        content_end = max(self._timeline.end_index / SAMPLE_RATE_HZ,
                          self._video_max_t + _EPS)
        while not self.done and self.next_t0_s < content_end - _EPS:
            t0 = self.next_t0_s
            tail = content_end - t0
            if tail < self.min_tail_s and content_end < t0 + self.window_s:
                logger.debug("dropping a %.3f s tail shorter than min_tail_s", tail)
                break
            self._emit_one(out)
        self.done = True
        return out

    # ---------------------------------------------------------------------------- output
    def _complete(self) -> bool:
        t1 = min((self.next_index + 1) * self.window_s, self.end_s)
        audio_ok = self._audio_ended or self._timeline.end_index >= round(t1 * SAMPLE_RATE_HZ)
        video_ok = self._video_ended or self._video_max_t >= t1 - _EPS
        return audio_ok and video_ok

    def _emit_ready(self) -> list[Window]:
        out: list[Window] = []
        if self._audio_ended and self._video_ended:
            return out  # only flush() may emit now: it knows where the media ends
        while not self.done and self._complete():
            self._emit_one(out)
        return out

    def _emit_one(self, out: list[Window]) -> None:
        w = self._build(self.next_index)
        self.next_index += 1
        if self.max_windows is not None and self.next_index >= self.max_windows:
            self.done = True
        if w is not None:
            self.windows_emitted += 1
            out.append(w)

    def _build(self, k: int) -> Window | None:
        t0, t1 = k * self.window_s, (k + 1) * self.window_s
        n = self.samples_per_window
        audio, n_real = self._timeline.take(k * n, (k + 1) * n)
        if n_real == 0:
            audio = np.zeros(0, np.float32)
        elif n_real < n:
            self.counters.add(audio_padded_samples=n - n_real)
        inside = [f for f in self._frames if f.pts_s < t1 - _EPS]
        self._frames = self._frames[len(inside):]
        if not inside and n_real == 0:
            self.counters.add(windows_skipped_empty=1)
            return None
        if self.has_video and not inside:
            self.counters.add(windows_without_video=1)
        frames = stack_frames([f.image for f in inside])
        pts = np.array([f.pts_s for f in inside], dtype=np.float64)
        window = Window(t0_s=t0, audio=audio, frames=frames, frame_pts_s=pts, duration_s=self.window_s)
        return on_grid(window, self.fps, self.window_s, counters=self.counters)


def stack_frames(images: list[np.ndarray]) -> np.ndarray:
    """``[F, H, W, 3]`` uint8; frames of another size (a device changed mode) are resized to the first's."""
    if not images:
        return np.zeros((0, 0, 0, 3), np.uint8)
    h, w = images[0].shape[:2]
    fixed = []
    for im in images:
        if im.shape[:2] != (h, w):
            rows = (np.arange(h) * im.shape[0] // h).clip(0, im.shape[0] - 1)
            cols = (np.arange(w) * im.shape[1] // w).clip(0, im.shape[1] - 1)
            im = im[rows][:, cols]
        fixed.append(im)
    return np.stack(fixed).astype(np.uint8, copy=False)


def grid_slots_s(t0_s: float, fps: float, window_s: float) -> np.ndarray:
    """``[round(window_s * fps)]`` float64 slot times ``t0 + k / fps`` of a window on the model's grid."""
    return t0_s + np.arange(round(window_s * fps)) / fps


def on_grid(window: Window, fps: float, window_s: float, *, counters: StreamCounters | None = None) -> Window:
    """Put a window on the model's grid; the one place frames are sampled onto it and audio is padded.

    Frames: exactly ``round(window_s * fps)`` at ``t0 + k / fps`` (``frame_pts_s`` becomes those slot
    times). Slot ``k`` shows the first frame at or after its time and before the next slot (the
    :class:`FrameSampler` rule); a slot no frame fell into repeats the frame nearest to it (counted in
    ``counters.video_frames_repeated``). A window without frames stays without. Audio: exactly
    ``round(window_s * 16000)`` samples (zero-padded or trimmed); a window without audio stays without.
    A window already on the grid is returned as it is (applying it twice changes nothing).

    The :class:`Windower` builds every window with it; windows made by hand (tests, evaluation,
    benchmarks, users of ``StreamSession.push_window``) go through it too.

    Args:
        window: ``audio [n]`` float32 at 16 kHz, ``frames [F, H, W, 3]`` uint8 at ``frame_pts_s [F]``.
        fps: the model's frame rate (``ModelSpec.fps``).
        window_s: the stream's window length.
        counters: where repeated frames are counted.

    Returns:
        A window with ``audio [window_s * 16000]`` (or ``[0]``), ``frames [window_s * fps, H, W, 3]``
        (or none) and ``duration_s == window_s``.
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if on_the_grid(window, fps, window_s):
        return window
    n_samples = round(window_s * SAMPLE_RATE_HZ)
    audio = window.audio
    if audio.size and audio.size != n_samples:
        audio = audio[:n_samples] if audio.size > n_samples else np.concatenate(
            [audio, np.zeros(n_samples - audio.size, np.float32)])
    frames, pts = window.frames, window.frame_pts_s
    if window.num_frames:
        slots = grid_slots_s(window.t0_s, fps, window_s)
        order = np.argsort(pts, kind="stable")
        pts_sorted = pts[order]
        first = np.searchsorted(pts_sorted, slots - _EPS, side="left")
        inside = (first < pts_sorted.size) & (pts_sorted[np.minimum(first, pts_sorted.size - 1)]
                                                < slots + 1.0 / fps - _EPS)
        nearest = np.abs(pts_sorted[None, :] - slots[:, None]).argmin(axis=1)
        chosen = np.where(inside, first, nearest)
        repeated = int(np.count_nonzero(~inside))
        if repeated and counters is not None:
            counters.add(video_frames_repeated=repeated)
        frames, pts = np.asarray(window.frames)[order[chosen]], slots
    return Window(t0_s=window.t0_s, audio=audio, frames=frames, frame_pts_s=pts, duration_s=window_s,
                  video_dropped=window.video_dropped)


def on_the_grid(window: Window, fps: float, window_s: float) -> bool:
    """Whether ``window`` is already on the model's grid (what :func:`on_grid` returns unchanged)."""
    n_frames, n_samples = round(window_s * fps), round(window_s * SAMPLE_RATE_HZ)
    if window.audio.size not in (0, n_samples) or window.num_frames not in (0, n_frames):
        return False
    if abs(float(window.duration_s or 0.0) - window_s) > _EPS:
        return False
    return not window.num_frames or bool(
        np.allclose(window.frame_pts_s, grid_slots_s(window.t0_s, fps, window_s), rtol=0.0, atol=_EPS))


def check_on_grid(window: Window, fps: float, window_s: float) -> None:
    """Raise ``ValueError`` unless ``window`` is on the model's grid (the engine takes windows as they are).

    Raises:
        ValueError: one line naming what is off and :func:`on_grid`.
    """
    if not on_the_grid(window, fps, window_s):
        raise ValueError(
            f"window t={window.t0_s:g}s is not on the model's grid ({window.num_frames} frames, "
            f"{window.audio.size} samples, {window.duration_s:g} s; expected {round(window_s * fps)} frames at "
            f"t0 + k/{fps:g}, {round(window_s * SAMPLE_RATE_HZ)} samples, {window_s:g} s): build windows with "
            "omnizip_stream.windowing.Windower or put them on the grid with omnizip_stream.windowing.on_grid")
