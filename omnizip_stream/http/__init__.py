"""The HTTP API of ``omnizip serve --http`` (FastAPI + uvicorn; the ``http`` extra).

``create_app(server, settings)`` (:mod:`omnizip_stream.http.app`) builds the app;
``serve_http(server, settings)`` (:mod:`omnizip_stream.http.runner`) serves it. Importing this package
does not import FastAPI: :mod:`omnizip_stream.http.settings` is read while the server file is parsed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve_http"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from omnizip_stream.http.app import create_app

        return create_app
    if name == "serve_http":
        from omnizip_stream.http.runner import serve_http

        return serve_http
    raise AttributeError(name)
