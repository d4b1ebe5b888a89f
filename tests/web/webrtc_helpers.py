"""An aiortc "browser": a peer connection that sends a coloured test video and a sine tone."""

from __future__ import annotations

import asyncio
import fractions
import math
import time

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)

TONE_HZ = 440.0
COLOUR = (200, 40, 60)  # RGB of the test video


class ColourTrack(VideoStreamTrack):
    """320x240 frames of one colour at 30 fps, paced in real time."""

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        image = np.empty((240, 320, 3), np.uint8)
        image[:] = COLOUR
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class ToneTrack(MediaStreamTrack):
    """A 440-Hz sine at 48 kHz stereo in 20-ms frames, paced in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._sent = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        n = 960
        if self._start is None:
            self._start = time.monotonic()
        wait_s = self._start + self._sent / 48000 - time.monotonic()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        t = (self._sent + np.arange(n)) / 48000
        tone = (0.3 * 32767 * np.sin(2 * math.pi * TONE_HZ * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(tone, 2)[None, :], format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self._sent, fractions.Fraction(1, 48000)
        self._sent += n
        return frame


async def browser_offer(*, audio: bool = True, video: bool = True) -> RTCPeerConnection:
    """A sending peer connection with its offer set (ICE gathered), host candidates only."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if video:
        pc.addTrack(ColourTrack())
    if audio:
        pc.addTrack(ToneTrack())
    await pc.setLocalDescription(await pc.createOffer())
    return pc


async def complete(pc: RTCPeerConnection, answer_sdp: str) -> None:
    """Apply the server's answer."""
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
