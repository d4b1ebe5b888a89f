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

from omnizip_stream.http.app import ApiError, read_json
from omnizip_stream.http.streams import unknown_stream
from omnizip_stream.server.config import MAX_STREAMS, StreamSpec, check_stream_id
from omnizip_stream.session import window_summary
from omnizip_stream.sources.base import SourceError

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
MAX_SDP_CHARS = 64_000
SNAPSHOT_MAX_SIDE = 640
JPEG_QUALITY = 80


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
        self.tasks: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Close every browser's peer connection (their streams are removed)."""
        await asyncio.gather(*(peer.close() for peer in list(self.peers.values())), return_exceptions=True)


def install(app: FastAPI) -> None:
    """The HTTP app's extension hook (``omnizip_stream.http.app.EXTENSIONS``): the page on ``app.state.server``."""
    mount_web(app, app.state.server)


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
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("sdp"), str) or not body["sdp"].strip():
            raise ApiError("bad_request", "the body needs \"sdp\" (the browser's offer) and \"type\": \"offer\"")
        if len(body["sdp"]) > MAX_SDP_CHARS:
            raise ApiError("too_long", f"the SDP offer is longer than {MAX_SDP_CHARS} characters", 413)
        stream_id = body.get("id") or webrtc.new_peer_id()
        try:
            check_stream_id(stream_id)
        except ValueError as exc:
            raise ApiError("bad_request", str(exc)) from None
        if stream_id in server.ids() or stream_id in peers:
            raise ApiError("conflict", f"stream {stream_id!r} is already being served")
        if len(server.ids()) >= MAX_STREAMS:
            raise ApiError("busy", f"{len(server.ids())} streams are served; at most {MAX_STREAMS}")
        try:
            peer, answer_sdp = await webrtc.accept_offer(body["sdp"], str(body.get("type", "offer")), stream_id)
        except SourceError as exc:  # aiortc is not installed
            raise ApiError("not_ready", exc.message) from None
        except ValueError as exc:
            raise ApiError("bad_request", " ".join(str(exc).split())) from None
        peers[stream_id] = peer
        spec = StreamSpec(stream_id, f"webrtc:{stream_id}", server.config.defaults)
        try:
            await server.add(spec)
        except Exception as exc:
            peers.pop(stream_id, None)
            await peer.close()
            code = "shutting_down" if isinstance(exc, RuntimeError) else "busy"
            raise ApiError(code, f"stream {stream_id!r}: {' '.join(str(exc).split())}") from None

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
            raise ApiError("unknown_stream", f"no WebRTC stream {stream_id[:130]!r}")
        await peer.close()
        return Response(status_code=204)

    @app.get("/v1/streams/{stream_id}/snapshot.jpg")
    async def snapshot(stream_id: str) -> Response:
        if stream_id not in server.ids():
            raise unknown_stream(server, stream_id)
        latest = server.stream(stream_id).latest_frame
        if latest is None:
            raise ApiError("not_found", f"stream {stream_id!r} has delivered no video frame yet")
        t_s, image = latest
        jpeg = await asyncio.to_thread(encode_jpeg, image)
        return Response(jpeg, media_type="image/jpeg",
                        headers={"Cache-Control": "no-store", "X-Frame-Time-S": f"{t_s:.3f}"})

    @app.get("/v1/streams/{stream_id}/windows")
    async def windows(stream_id: str, after: int = -1) -> Response:
        if stream_id not in server.ids():
            raise unknown_stream(server, stream_id)
        reports = list(server.session(stream_id).reports)
        return JSONResponse({"windows": [window_summary(r) for r in reports if r.index > after]})

    def on_change(event: str, info: dict[str, Any]) -> None:
        peer = peers.get(info.get("id", ""))
        if event == "removed" and peer is not None:  # DELETE /v1/streams/{id}: hang up on the browser too
            task = asyncio.get_running_loop().create_task(peer.close())
            routes.tasks.add(task)
            task.add_done_callback(routes.tasks.discard)

    server.on_change.append(on_change)
    app.state.web = routes
    return routes
