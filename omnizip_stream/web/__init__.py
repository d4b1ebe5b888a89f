"""The browser live assistant: the page at ``/`` and its WebRTC signalling (mounted on the HTTP app).

``mount_web(app, server)`` adds to a FastAPI app: ``GET /`` (the page, plain HTML/JS/CSS from
``static/``, no build step and nothing from a CDN), ``POST /v1/webrtc/offer`` (a browser's camera and
microphone become a new stream), ``POST /v1/webrtc/{id}/close``, ``GET /v1/streams/{id}/snapshot.jpg``
and ``GET /v1/streams/{id}/windows`` (each window's audio retention and video keep ratio).
"""

from __future__ import annotations

from omnizip_stream.web.routes import STATIC_DIR, WebRoutes, install, mount_web

__all__ = ["STATIC_DIR", "WebRoutes", "install", "mount_web"]
