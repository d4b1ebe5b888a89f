"""Media preparation off the model thread: each window's frames resized and patchified when it is queued.

Resizing a window's frames to the model's pixel budget and cutting them into the vision tower's patch
rows is CPU work that depends on nothing but the frames, so it need not wait for the model thread (where
it took about a quarter of a batched window's time on the tiny model, and where on a GPU it leaves the
device idle). :class:`MediaPreparer` starts it on its own thread(s) as soon as a window is queued
(:meth:`StreamSession.push_window <omnizip_stream.session.StreamSession.push_window>`); the model thread
takes the result when it encodes the window (:class:`~omnizip.preprocess.PreparedVideo`), waiting only
if it is not done yet. The patches are the ones the model thread would make (same function, same
config): results are bit-identical with and without preparation.

Not prepared: windows without frames, adapters without ``prepare_video``, and streams that encode a
planned grid (``vision_budget: audio`` picks the frames and size after the audio, on the model thread).
A window whose video is shed while queued cancels its preparation if it has not started.

Memory: a queued window holds its float32 patches next to its frames until it is encoded, at most
``window_queue`` windows a stream (a 2-s window at the paper's pixel budget: 1024 patches, 4.8 MB).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from typing import Any

from omnizip.preprocess import PreparedVideo
from omnizip_stream.config import StreamConfig
from omnizip_stream.window import Window

logger = logging.getLogger(__name__)


def default_prepare_threads() -> int:
    """Preparation threads for this machine: a quarter of the cores, 1 to 4 (1 on a 2-core box)."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


class MediaPreparer:
    """Prepares queued windows' video on ``threads`` threads (0: none, the model thread does it).

    Args:
        threads: worker threads; 0 turns preparation off.
    """

    def __init__(self, threads: int) -> None:
        if not isinstance(threads, int) or threads < 0:
            raise ValueError(f"prepare_threads must be a whole number >= 0, got {threads!r}")
        self.threads = threads
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False

    def prepare(self, adapter: Any, window: Window, config: StreamConfig) -> PreparedVideo | None:
        """Start preparing ``window``'s frames for ``adapter``; None where nothing is prepared (see the module)."""
        if (self.threads == 0 or self._closed or not window.num_frames
                or config.compression.vision_budget != "off" or not hasattr(adapter, "prepare_video")):
            return None
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="omnizip-prepare")
        future = self._pool.submit(adapter.prepare_video, window.frames)
        return PreparedVideo(window.frames, adapter.vision_cfg, future.result, future.cancel)

    def close(self) -> None:
        """Stop: queued preparations are cancelled (their windows are being discarded), none start after."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
