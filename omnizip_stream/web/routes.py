"""The page's routes: static files, WebRTC signalling, snapshots and the per-window compression series.

A browser's stream lives exactly as long as its peer connection: ``POST /v1/webrtc/offer`` registers
the peer and adds the stream ``webrtc:<id>`` to the :class:`~omnizip_stream.server.service.StreamServer`;
when the connection closes (the page is left: its ``pagehide`` beacon ``POST /v1/webrtc/{id}/close``,
or the connection failing) the stream is removed.
"""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from omnizip_stream.server.config import StreamSpec, check_stream_id
from omnizip_stream.session import window_summary

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
MAX_SDP_CHARS = 64_000
SNAPSHOT_MAX_SIDE = 640
JPEG_QUALITY = 80


def _error(status: int, code: str, message: str) -> JSONResponse:
    """A JSON error body like the MQTT replies: ``{"error": {"code", "message"}}``."""
    return JSONResponse({"error": {"code": code, "message": " ".join(message.split())}}, status_code=status)


def encode_jpeg(image: Any, *, max_side: int = SNAPSHOT_MAX_SIDE, quality: int = JPEG_QUALITY) -> bytes:
    """``[H, W, 3]`` uint8 RGB -> JPEG bytes (scaled so the longer side is at most ``max_side``)."""
    from PIL import Image

    picture = Image.fromarray(image, "RGB")
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side))
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=quality)
    return out.getvalue()


class WebRoutes:
    """What :func:`mount_web` added: the connected browsers' peers; :meth:`aclose` at shutdown."""

    def __init__(self) -> None:
        self.peers: dict[str, Any] = {}  # stream id -> WebRTCPeer

    async def aclose(self) -> None:
        """Close every browser's peer connection (their streams are removed)."""
        await asyncio.gather(*(peer.close() for peer in list(self.peers.values())), return_exceptions=True)


def mount_web(app: FastAPI, server: Any) -> WebRoutes:
    """Add the page and its routes to ``app``, serving the streams of ``server`` (a started StreamServer).

    Routes: ``GET /`` (index.html), ``/static/*``, ``POST /v1/webrtc/offer`` ``{sdp, type, id?}`` ->
    ``{id, sdp, type}``, ``POST /v1/webrtc/{id}/close``, ``GET /v1/streams/{id}/snapshot.jpg`` and
    ``GET /v1/streams/{id}/windows?after=N`` -> ``{"windows": [window_summary, ...]}``.

    Returns:
        The :class:`WebRoutes` handle (also ``app.state.web``): ``await handle.aclose()`` on shutdown.
    """
    from omnizip_stream.sources import webrtc

    routes = WebRoutes()
    peers = routes.peers
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.post("/v1/webrtc/offer")
    async def webrtc_offer(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "bad_request", "the body must be JSON: {\"sdp\": ..., \"type\": \"offer\"}")
        if not isinstance(body, dict) or not isinstance(body.get("sdp"), str) or not body["sdp"].strip():
            return _error(400, "bad_request", "the body needs \"sdp\" (the browser's offer) and \"type\": \"offer\"")
        if len(body["sdp"]) > MAX_SDP_CHARS:
            return _error(413, "too_large", f"the SDP offer is longer than {MAX_SDP_CHARS} characters")
        stream_id = body.get("id") or webrtc.new_peer_id()
        try:
            check_stream_id(stream_id)
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))
        if stream_id in server.ids() or stream_id in peers:
            return _error(409, "conflict", f"stream {stream_id!r} already exists")
        try:
            peer, answer_sdp = await webrtc.accept_offer(body["sdp"], str(body.get("type", "offer")), stream_id)
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))
        peers[stream_id] = peer
        spec = StreamSpec(stream_id, f"webrtc:{stream_id}", server.config.defaults)
        try:
            await server.add(spec)
        except Exception as exc:
            peers.pop(stream_id, None)
            await peer.close()
            return _error(409 if isinstance(exc, ValueError) else 503, "refused", f"stream {stream_id!r}: {exc}")

        async def removed(closed: webrtc.WebRTCPeer) -> None:
            peers.pop(closed.id, None)
            if closed.id in server.ids() and server.stream(closed.id).spec is spec:
                logger.info("webrtc %s: the browser left; removing its stream", closed.id)
                await server.remove(closed.id)

        peer.on_close.append(removed)
        logger.info("webrtc %s: new stream (%s)", stream_id, "+".join(sorted(peer.kinds)))
        return JSONResponse({"id": stream_id, "sdp": answer_sdp, "type": "answer", "kinds": sorted(peer.kinds)})

    @app.post("/v1/webrtc/{stream_id}/close")
    async def webrtc_close(stream_id: str) -> Response:
        peer = peers.get(stream_id)
        if peer is None:
            return _error(404, "not_found", f"no WebRTC stream {stream_id!r}")
        await peer.close()
        return Response(status_code=204)

    @app.get("/v1/streams/{stream_id}/snapshot.jpg")
    async def snapshot(stream_id: str) -> Response:
        if stream_id not in server.ids():
            return _error(404, "not_found", f"no stream {stream_id!r}")
        latest = server.stream(stream_id).latest_frame
        if latest is None:
            return _error(404, "no_frame", f"stream {stream_id!r} has delivered no video frame yet")
        t_s, image = latest
        jpeg = await asyncio.to_thread(encode_jpeg, image)
        return Response(jpeg, media_type="image/jpeg",
                        headers={"Cache-Control": "no-store", "X-Frame-Time-S": f"{t_s:.3f}"})

    @app.get("/v1/streams/{stream_id}/windows")
    async def windows(stream_id: str, after: int = -1) -> Response:
        if stream_id not in server.ids():
            return _error(404, "not_found", f"no stream {stream_id!r}")
        reports = list(server.session(stream_id).reports)
        return JSONResponse({"windows": [window_summary(r) for r in reports if r.index > after]})

    app.state.web = routes
    return routes
