"""A browser's camera and microphone over WebRTC (aiortc) as a live source: spec ``webrtc:<peer id>``.

The web page's "Use my camera" sends an SDP offer (``POST /v1/webrtc/offer``); :func:`accept_offer`
answers it with an aiortc :class:`RTCPeerConnection` and registers a :class:`WebRTCPeer` under an id.
``open_windows("webrtc:<id>")`` then builds one :class:`WebRTCTrackSource` per received track (audio,
video), which feed the same :class:`~omnizip_stream.windowing.Windower` as a camera and a microphone.

Times: each track is anchored at the session time its first frame arrived; later frames are placed by
their RTP timestamps (continuous audio, no arrival jitter). Audio is resampled to 16 kHz mono, video
sampled at ``fps`` by timestamp and scaled to ``max_side``. When the browser's RTCP sender reports
have arrived, :meth:`WebRTCPeer.capture_time` maps a frame's RTP timestamp to the time the browser
captured it on the *sender's* NTP clock (Chromium's and aiortc's are not the wall clock: a constant
offset): the frame log behind ``scripts/bench_webrtc.py``'s latency numbers.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from omnizip_stream.clock import Clock, MonotonicClock
from omnizip_stream.sources._av import scaled_size
from omnizip_stream.sources.base import SAMPLE_RATE_HZ, AudioChunk, SourceEnded, SourceError, VideoFrame
from omnizip_stream.windowing import FrameSampler

logger = logging.getLogger(__name__)

NTP_UNIX_OFFSET_S = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
_RTP_WRAP = 1 << 32
_PEERS: dict[str, WebRTCPeer] = {}


def import_aiortc() -> Any:
    """``aiortc``, or a one-line :class:`SourceError` naming the extra that installs it."""
    try:
        import aiortc
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SourceError("WebRTC needs aiortc: pip install 'omnizip[web]'") from exc
    return aiortc


@dataclass(frozen=True)
class FrameTiming:
    """When one kept video frame was captured and received.

    Attributes:
        pts_s: the frame's session time.
        sender_capture_s: when the browser captured it, seconds on the sender's RTCP (NTP) clock, which
            differs from this machine's wall clock by a constant (None before the first sender report).
        arrival_wall_s: when the decoded frame reached the source (``time.time()``).
    """

    pts_s: float
    sender_capture_s: float | None
    arrival_wall_s: float


class _SenderClock:
    """RTP timestamp -> the sender's NTP clock (as Unix seconds), from the latest RTCP sender report of one track."""

    def __init__(self) -> None:
        self.rtp_ts: int | None = None
        self.wall_s = 0.0

    def report(self, rtp_ts: int, ntp_timestamp: int) -> None:
        self.rtp_ts = int(rtp_ts)
        self.wall_s = (ntp_timestamp >> 32) + (ntp_timestamp & 0xFFFFFFFF) / 2**32 - NTP_UNIX_OFFSET_S

    def wall(self, rtp_ts: int, clock_rate_hz: int) -> float | None:
        if self.rtp_ts is None:
            return None
        delta = (int(rtp_ts) - self.rtp_ts) % _RTP_WRAP
        if delta >= _RTP_WRAP // 2:
            delta -= _RTP_WRAP
        return self.wall_s + delta / clock_rate_hz


class WebRTCPeer:
    """One browser's peer connection: the tracks it sends and their capture clocks.

    Args:
        peer_id: the id the page and the stream are known by (the stream id).
    """

    def __init__(self, peer_id: str) -> None:
        aiortc = import_aiortc()
        self.id = peer_id
        # No STUN/TURN server: host candidates (the browser on this machine or the LAN); aiortc would
        # otherwise ask Google's public STUN server.
        self.pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
        self.tracks: dict[str, Any] = {}  # "audio"/"video" -> aiortc MediaStreamTrack
        self.closed = asyncio.Event()
        self.frame_log: collections.deque[FrameTiming] = collections.deque(maxlen=4096)
        self._sender_clocks: dict[str, _SenderClock] = {}
        self.on_close: list[Callable[[WebRTCPeer], Any]] = []

        @self.pc.on("track")
        def _on_track(track: Any) -> None:
            if track.kind in ("audio", "video") and track.kind not in self.tracks:
                self.tracks[track.kind] = track

        @self.pc.on("connectionstatechange")
        async def _on_state() -> None:
            logger.info("webrtc %s: connection %s", self.id, self.pc.connectionState)
            if self.pc.connectionState in ("failed", "closed"):
                await self.close()

    @property
    def kinds(self) -> frozenset[str]:
        """The kinds the browser sends (known once the offer has been accepted)."""
        return frozenset(self.tracks)

    async def accept(self, sdp: str, sdp_type: str = "offer") -> tuple[str, str]:
        """Answer the browser's offer; returns ``(answer_sdp, "answer")`` (ICE candidates included).

        Raises:
            ValueError: not an offer, a malformed SDP, or no audio or video track in it.
        """
        aiortc = import_aiortc()
        if sdp_type != "offer":
            raise ValueError(f"expected an SDP offer, got type {sdp_type!r}")
        try:
            await self.pc.setRemoteDescription(aiortc.RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:
            raise ValueError(f"bad SDP offer: {' '.join(str(exc).split()) or type(exc).__name__}") from exc
        if not self.tracks:
            raise ValueError("the offer sends no audio or video track")
        for receiver in self.pc.getReceivers():
            self._watch_sender_reports(receiver)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)  # aiortc gathers every ICE candidate here
        local = self.pc.localDescription
        return local.sdp, local.type

    def _watch_sender_reports(self, receiver: Any) -> None:
        """Record the RTCP sender reports of ``receiver``'s track (RTP time -> the browser's wall clock).

        aiortc keeps no RTP/NTP pair of its own; its receiver's RTCP handler is wrapped (an instance
        attribute, nothing else changes). Without it capture times are simply unknown.
        """
        from aiortc.rtp import RtcpSrPacket

        kind = receiver.track.kind if receiver.track is not None else None
        handler = getattr(receiver, "_handle_rtcp_packet", None)
        if kind is None or handler is None:
            return
        sender_clock = self._sender_clocks.setdefault(kind, _SenderClock())

        async def handle(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket):
                sender_clock.report(packet.sender_info.rtp_timestamp, packet.sender_info.ntp_timestamp)
            await handler(packet)

        receiver._handle_rtcp_packet = handle

    def capture_time(self, kind: str, rtp_ts: int, clock_rate_hz: int) -> float | None:
        """When the browser captured the media at ``rtp_ts``, on its RTCP clock (Unix-epoch seconds), if known."""
        sender_clock = self._sender_clocks.get(kind)
        return sender_clock.wall(rtp_ts, clock_rate_hz) if sender_clock is not None else None

    async def close(self) -> None:
        """Close the peer connection and unregister it (idempotent); ``on_close`` callbacks run once."""
        if self.closed.is_set():
            return
        self.closed.set()
        if _PEERS.get(self.id) is self:
            del _PEERS[self.id]
        await self.pc.close()
        for callback in list(self.on_close):
            try:
                result = callback(self)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # a listener's bug never blocks the close
                logger.exception("webrtc %s: on_close callback failed", self.id)


def new_peer_id() -> str:
    """A fresh stream id for a browser (``browser-1a2b3c``)."""
    return f"browser-{secrets.token_hex(3)}"


async def accept_offer(sdp: str, sdp_type: str = "offer", peer_id: str | None = None) -> tuple[WebRTCPeer, str]:
    """Create, answer and register the peer of a browser's offer; returns ``(peer, answer_sdp)``.

    Raises:
        ValueError: the id is taken, or the offer is unusable (the peer is closed again).
    """
    peer_id = peer_id or new_peer_id()
    if peer_id in _PEERS:
        raise ValueError(f"a WebRTC peer {peer_id!r} is already connected")
    peer = WebRTCPeer(peer_id)
    try:
        answer_sdp, _ = await peer.accept(sdp, sdp_type)
    except BaseException:
        await peer.close()
        raise
    _PEERS[peer_id] = peer
    return peer, answer_sdp


def get_peer(peer_id: str) -> WebRTCPeer:
    """The registered peer ``peer_id`` (the source spec ``webrtc:<peer id>``).

    Raises:
        SourceError: no such peer connection (it is created by the web page's offer).
    """
    peer = _PEERS.get(peer_id)
    if peer is None or peer.closed.is_set():
        raise SourceError(f"no WebRTC peer connection {peer_id!r} (a webrtc: stream is created by the web "
                          "page's \"Use my camera\", POST /v1/webrtc/offer)")
    return peer


class WebRTCTrackSource:
    """One received track (``audio`` or ``video``) of a :class:`WebRTCPeer` as a live :class:`Source`.

    Args:
        peer: the peer connection.
        kind: ``"audio"`` or ``"video"``.
        fps: video frames kept per second (by timestamp).
        max_side: video scaled so the longer side is at most this many pixels (None: native).
        clock / session_t0: the session clock and its reading at session time 0.
    """

    def __init__(self, peer: WebRTCPeer, kind: str, *, fps: float | None = 2.0, max_side: int | None = 640,
                 clock: Clock | None = None, session_t0: float | None = None) -> None:
        if kind not in peer.tracks:
            raise SourceError(f"WebRTC peer {peer.id!r} sends no {kind} track")
        self.peer = peer
        self.track = peer.tracks[kind]
        self.name = f"webrtc {peer.id} {kind}"
        self.kinds = frozenset({kind})
        self.max_side = max_side
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.session_t0 = self.clock.now() if session_t0 is None else session_t0
        self._sampler = FrameSampler(fps)
        self._pending: collections.deque[AudioChunk | VideoFrame] = collections.deque()
        self._anchor_s: float | None = None  # session time of the first frame
        self._first_pts = 0
        self._last_pts = 0
        self._pts_ext = 0  # RTP timestamps unwrapped past 2**32
        self._resampler: Any = None
        self._audio_t0_s = 0.0
        self._audio_samples = 0
        self._audio_in_expected_s = 0.0
        self._closed = False

    async def start(self) -> None:
        """Nothing to open: the track is already being received."""
        if self.peer.closed.is_set():
            raise SourceError(f"WebRTC peer {self.peer.id!r} has disconnected")

    async def recv(self) -> AudioChunk | VideoFrame:
        """Next item; :class:`SourceEnded` once the browser has gone (page left, connection closed)."""
        from aiortc.mediastreams import MediaStreamError

        while not self._pending:
            if self._closed:
                raise SourceEnded(self.name)
            try:
                frame = await self.track.recv()
            except MediaStreamError:
                raise SourceEnded(self.name) from None
            self._pending.extend(self._convert(frame))
        return self._pending.popleft()

    async def aclose(self) -> None:
        """Stop reading (the peer connection itself stays up: its page may still be open)."""
        self._closed = True
        self._pending.clear()

    # ------------------------------------------------------------------ conversion
    def _session_time(self, frame: Any) -> float:
        """Session time of ``frame``: anchored at the first frame's arrival, then by its RTP timestamp."""
        pts = int(frame.pts or 0)
        if self._anchor_s is None:
            self._anchor_s = self.clock.now() - self.session_t0
            self._first_pts = self._last_pts = pts
        delta = (pts - self._last_pts) % _RTP_WRAP
        if delta >= _RTP_WRAP // 2:
            delta -= _RTP_WRAP
        self._pts_ext += delta
        self._last_pts = pts
        return self._anchor_s + float(self._pts_ext * frame.time_base)

    def _convert(self, frame: Any) -> list[AudioChunk | VideoFrame]:
        if "video" in self.kinds:
            item = self._video(frame)
            return [item] if item is not None else []
        return self._audio(frame)

    def _video(self, frame: Any) -> VideoFrame | None:
        t_s = self._session_time(frame)
        if not self._sampler.accept(t_s):
            return None
        width, height = scaled_size(frame.width, frame.height, self.max_side)
        image = frame.to_ndarray(format="rgb24", width=width, height=height)
        rate_hz = round(1 / float(frame.time_base)) if frame.time_base else 90_000
        self.peer.frame_log.append(FrameTiming(t_s, self.peer.capture_time("video", int(frame.pts or 0), rate_hz),
                                               time.time()))
        return VideoFrame(t_s, np.ascontiguousarray(image, dtype=np.uint8))

    def _audio(self, frame: Any) -> list[AudioChunk | VideoFrame]:
        import av

        t_s = self._session_time(frame)
        if self._resampler is None or abs(t_s - self._audio_in_expected_s) > 0.2:  # the first frame, or a gap
            self._resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE_HZ)
            self._audio_t0_s, self._audio_samples = t_s, 0
        self._audio_in_expected_s = t_s + frame.samples / frame.sample_rate
        out: list[AudioChunk | VideoFrame] = []
        for resampled in self._resampler.resample(frame):
            channels = resampled.to_ndarray()  # fltp: [channels, n]; mono = their mean, as the file decoder
            mono = channels.mean(axis=0, dtype=np.float32) if channels.shape[0] > 1 else channels[0]
            if mono.shape[0] == 0:
                continue
            pts_s = self._audio_t0_s + self._audio_samples / SAMPLE_RATE_HZ
            self._audio_samples += mono.shape[0]
            out.append(AudioChunk(pts_s, np.ascontiguousarray(mono, dtype=np.float32)))
        return out


def build_webrtc_sources(peer_id: str, *, fps: float, max_side: int | None, clock: Clock,
                         session_t0: float) -> list[WebRTCTrackSource]:
    """One source per track the browser ``peer_id`` sends (``open_windows("webrtc:<id>")``)."""
    peer = get_peer(peer_id)
    return [WebRTCTrackSource(peer, kind, fps=fps, max_side=max_side, clock=clock, session_t0=session_t0)
            for kind in ("video", "audio") if kind in peer.tracks]


__all__ = ["FrameTiming", "WebRTCPeer", "WebRTCTrackSource", "accept_offer", "build_webrtc_sources", "get_peer",
           "new_peer_id"]
