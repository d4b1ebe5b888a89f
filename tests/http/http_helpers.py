"""A real HTTP API (uvicorn on a free port) over a real StreamServer of the tiny model, in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from omnizip_stream.config import StreamConfig
from omnizip_stream.http.runner import serve_http
from omnizip_stream.http.settings import HttpSettings
from omnizip_stream.server.config import ServerConfig, ServerSettings, StreamSpec

PIXELS = 56 * 56


def stream_config(**overrides: Any) -> StreamConfig:
    """Tiny model, small frames, short answers."""
    return StreamConfig(model="tiny", **{"method": "omnizip", "max_new_tokens": 6, "max_question_tokens": 32,
                                         "video_max_pixels": PIXELS, **overrides})


def replay_spec(stream_id: str, seed: int = 1, seconds: float = 4.0) -> StreamSpec:
    """A synthetic stream replayed as fast as consumed, ``seconds`` long (then ended: still answerable)."""
    return StreamSpec(stream_id, f"synthetic:seed={seed}", stream_config(), realtime=False,
                      duration_s=seconds, max_side=112)


class Served:
    """``with Served(streams, settings) as s:`` a StreamServer + its HTTP API on their own loop/thread.

    ``s.url`` is the base URL; ``s.call(coro_fn)`` runs ``coro_fn(server)`` on the server's loop.
    """

    def __init__(self, streams: tuple[StreamSpec, ...] = (), settings: HttpSettings | None = None) -> None:
        self.config = ServerConfig(stream_config(), ServerSettings(retry_min_s=0.05, retry_max_s=0.1), streams)
        self.settings = settings or HttpSettings(port=0)
        self.url = ""
        self.server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready: Future[str] = Future()
        self._thread = threading.Thread(target=self._run, name="http-test-server", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from omnizip_stream.server.service import StreamServer

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with StreamServer(self.config) as server, serve_http(server, self.settings) as service:
                self.server = server
                self._ready.set_result(service.url)
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            raise

    def call(self, fn: Any, timeout_s: float = 60.0) -> Any:
        """Run ``await fn(server)`` on the server's loop; return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(fn(self.server), self._loop).result(timeout_s)

    def __enter__(self) -> Served:
        self._thread.start()
        self.url = self._ready.result(120).rstrip("/")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@contextlib.contextmanager
def served(*streams: StreamSpec, settings: HttpSettings | None = None) -> Iterator[Served]:
    """A :class:`Served` API (see there)."""
    with Served(tuple(streams), settings) as s:
        yield s


async def wait_windows(server: Any, stream_id: str, count: int = 1) -> None:
    """Wait until ``stream_id`` has ingested ``count`` windows (or ended)."""
    run = server.stream(stream_id)
    session = server.session(stream_id)
    for _ in range(6000):
        if session.stats().get("windows_ingested", 0) >= count or run.done.is_set():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{stream_id}: no {count} windows")
