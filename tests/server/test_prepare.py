"""Media preparation off the model thread (``omnizip_stream/server/prepare.py``).

A queued window's frames are resized and patchified on a preparation thread; the model thread uses
those patches when it encodes the window. The caches must be bit-identical to a worker that prepares
nothing, the work must really leave the model thread, and a window whose video is shed while queued
cancels its preparation and is encoded from its own (empty) frames.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Any

import numpy as np
import pytest
import torch
from omni_helpers import synthetic_clip
from server_helpers import adapter_for, stream_config, windows_for

import omnizip.adapters.towers as towers
from omnizip.adapters.base import AVCursor
from omnizip.adapters.batch_encode import EncodeRequest
from omnizip.preprocess import PreparedVideo
from omnizip_stream.server import ModelWorker, PendingWindow
from omnizip_stream.server.prepare import MediaPreparer
from omnizip_stream.server.scheduler import shed_video


async def _run_streams(adapter: Any, prepare_threads: int, windows: dict[str, list[Any]],
                       max_batch: int) -> dict[str, Any]:
    """Every stream's windows through one worker; each stream's final cache tensors."""
    async with ModelWorker(stream_config(), adapter=adapter, max_batch=max_batch,
                           prepare_threads=prepare_threads) as worker:
        sessions = {sid: await worker.add_stream(sid, stream_config()) for sid in windows}
        for k in range(max(len(w) for w in windows.values())):
            for sid, ws in windows.items():
                if k < len(ws):
                    await sessions[sid].push_window(ws[k])
        await asyncio.gather(*(s.drain() for s in sessions.values()))
        out = {}
        for sid, session in sessions.items():
            assert session.stats()["windows_failed"] == 0
            cache = session.engine.cache.cache
            out[sid] = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
        return out


@pytest.mark.parametrize("max_batch", [1, 4])
def test_prepared_windows_give_bit_identical_caches_and_leave_the_model_thread(tiny25, monkeypatch, max_batch):
    adapter = adapter_for(tiny25)
    windows = {"door": windows_for(6.0, seed=1), "yard": windows_for(6.0, seed=2, size=(84, 112))}
    threads: list[str] = []  # where each window's frames were resized and patchified
    original = towers.preprocess_video

    def recording(frames: np.ndarray, cfg: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(frames, cfg)

    monkeypatch.setattr(towers, "preprocess_video", recording)
    prepared = asyncio.run(_run_streams(adapter, 1, windows, max_batch))
    assert len(threads) == 6 and all(name.startswith("omnizip-prepare") for name in threads), threads
    threads.clear()
    inline = asyncio.run(_run_streams(adapter, 0, windows, max_batch))
    assert threads == ["omnizip-model"] * 6  # prepare_threads=0: the model thread resizes, as before
    for sid in windows:
        for (k1, v1), (k0, v0) in zip(prepared[sid], inline[sid], strict=True):
            assert torch.equal(k1, k0) and torch.equal(v1, v0)


def test_patches_made_for_other_frames_are_not_used(tiny25):
    adapter = adapter_for(tiny25)
    _, frames = synthetic_clip(2.0, seed=3, audio=False)
    wrong = PreparedVideo(frames.copy(), adapter.vision_cfg, lambda: pytest.fail("patches of other frames used"))
    cursor = AVCursor(0, 0, 0, None, None)
    alone = adapter.encode_av_batch([EncodeRequest(None, frames, cursor, saliency=None)])[0]
    ignored = adapter.encode_av_batch([EncodeRequest(None, frames, cursor, saliency=None, prepared_video=wrong)])[0]
    assert torch.equal(alone.layout.embeds, ignored.layout.embeds)
    right = PreparedVideo(frames, adapter.vision_cfg, lambda: adapter.prepare_video(frames))
    used = adapter.encode_av_batch([EncodeRequest(None, frames, cursor, saliency=None, prepared_video=right)])[0]
    assert torch.equal(alone.layout.embeds, used.layout.embeds)


def test_shedding_a_windows_video_cancels_its_preparation():
    cancelled: list[float] = []
    pending: collections.deque[PendingWindow] = collections.deque()
    for k, window in enumerate(windows_for(6.0, seed=4)):
        prep = PreparedVideo(window.frames, None, lambda: None, lambda t=window.t0_s: cancelled.append(t))  # type: ignore[arg-type]
        pending.append(PendingWindow(window, 0.0, window.t1_s, k, prep))
    shed = shed_video(pending, keep_video=1)
    assert shed.windows_video_stripped == 2 and cancelled == [0.0, 2.0]
    assert [p.prepared is None for p in pending] == [True, True, False]


def test_what_is_not_prepared(tiny25):
    adapter = adapter_for(tiny25)
    window = windows_for(2.0, seed=5)[0]
    audio_only = type(window)(window.t0_s, window.audio, np.zeros((0, 0, 0, 3), np.uint8), np.zeros(0))
    preparer = MediaPreparer(1)
    try:
        made = preparer.prepare(adapter, window, stream_config())
        assert made is not None and made.matches(window.frames, adapter.vision_cfg)
        assert torch.equal(made.patches()[0], adapter.prepare_video(window.frames)[0])
        assert preparer.prepare(adapter, audio_only, stream_config()) is None
        # listen before you look picks the frames after the audio, on the model thread
        assert preparer.prepare(adapter, window, stream_config(vision_budget="audio")) is None
        assert preparer.prepare(object(), window, stream_config()) is None  # an adapter without prepare_video
    finally:
        preparer.close()
    assert preparer.prepare(adapter, window, stream_config()) is None  # closed
    assert MediaPreparer(0).prepare(adapter, window, stream_config()) is None
    with pytest.raises(ValueError, match="prepare_threads"):
        MediaPreparer(-1)


def test_the_server_file_sets_the_preparation_threads(tiny25):
    from omnizip_stream.server.config import ServerConfig, ServerSettings
    from omnizip_stream.server.prepare import default_prepare_threads
    from omnizip_stream.server.service import StreamServer

    for setting, threads in ((0, 0), (3, 3), (None, default_prepare_threads())):
        server = StreamServer(ServerConfig(stream_config(), ServerSettings(prepare_threads=setting), ()),
                              adapter=adapter_for(tiny25))
        assert server.worker.preparer.threads == threads
