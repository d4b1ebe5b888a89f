"""The webrtc source: a peer's tracks (aiortc on both ends, no browser) become windows with audio and video."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("aiortc")

from webrtc_helpers import COLOUR, browser_offer, complete  # noqa: E402

from omnizip_stream.sources import SourceError, open_windows, parse_spec  # noqa: E402
from omnizip_stream.sources.webrtc import accept_offer, get_peer  # noqa: E402


def test_the_spec_names_a_peer():
    spec = parse_spec("webrtc:browser-1a2b3c")
    assert (spec.kind, spec.target, spec.live) == ("webrtc", "browser-1a2b3c", True)
    with pytest.raises(SourceError, match="peer id"):
        parse_spec("webrtc:")


async def test_an_unknown_peer_is_a_one_line_error():
    with pytest.raises(SourceError, match="no WebRTC peer connection 'nobody'"):
        async with open_windows("webrtc:nobody"):
            pass


async def test_a_peers_camera_and_microphone_become_windows_until_it_leaves():
    client = await browser_offer()
    peer, answer = await accept_offer(client.localDescription.sdp, "offer", "webrtc-test")
    try:
        await complete(client, answer)
        assert peer.kinds == {"audio", "video"}
        async with open_windows("webrtc:webrtc-test", window_s=2.0, fps=2.0, max_side=112) as windows:
            got = []
            async with asyncio.timeout(30):
                async for window in windows:
                    got.append(window)
                    if len(got) == 2:
                        break
            for window in got:
                assert window.audio.shape == (32000,)
                tail = window.audio[16000:]  # the second half: the tone has surely started
                rms = float(np.sqrt(np.mean(tail**2)))
                assert 0.1 < rms < 0.3, rms  # 0.3-amplitude sine: rms 0.21 (resampled to 16 kHz mono)
                assert window.num_frames >= 2
                assert window.frames.shape[1:] == (84, 112, 3)  # 320x240 scaled to max_side 112
                mean_rgb = window.frames.reshape(-1, 3).mean(axis=0)
                assert np.allclose(mean_rgb, COLOUR, atol=12), mean_rgb
            assert got[1].t0_s == pytest.approx(got[0].t0_s + 2.0)
            # the sender reports map RTP time to the sender's clock: arrival - capture is its (constant)
            # offset from ours plus a transit of milliseconds
            transits = [t.arrival_wall_s - t.sender_capture_s for t in peer.frame_log if t.sender_capture_s is not None]
            assert transits and max(transits) - min(transits) < 0.2, transits

            await client.close()  # the browser leaves: the stream ends, the peer is unregistered
            async with asyncio.timeout(15):
                async for _ in windows:
                    pass
        async with asyncio.timeout(15):
            await peer.closed.wait()
        with pytest.raises(SourceError):
            get_peer("webrtc-test")
    finally:
        await client.close()
        await peer.close()


def test_rtp_timestamps_that_wrap_past_2_to_the_32_keep_time_continuous():
    import fractions
    from types import SimpleNamespace

    from omnizip_stream.clock import ManualClock
    from omnizip_stream.sources.webrtc import WebRTCTrackSource

    peer = SimpleNamespace(id="p", tracks={"audio": None}, closed=asyncio.Event(), frame_log=[],
                           capture_time=lambda *a: None)
    clock = ManualClock(100.0)
    source = WebRTCTrackSource(peer, "audio", clock=clock, session_t0=98.0)  # session time 2.0 s now
    start = 2**32 - 960  # one 20-ms Opus frame before the wrap
    times = [source._session_time(SimpleNamespace(pts=(start + k * 960) % 2**32,
                                                  time_base=fractions.Fraction(1, 48000))) for k in range(4)]
    assert times == pytest.approx([2.0, 2.02, 2.04, 2.06])
