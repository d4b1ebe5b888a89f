"""``omnizip serve``'s run: a :class:`StreamServer` with every stream of a server file on its MQTT topics.

One model is loaded; every stream answers on ``omnizip/<id>/query`` and publishes its retained status on
``omnizip/<id>/status``; each stream's state changes and status are printed. The run goes on until
SIGTERM (graceful: every context is exited, the status topics go offline, an embedded broker is
stopped) or Ctrl-C (cancelled). A stream whose source fails is retried and reported (its status
carries ``source_state``, ``source_retries`` and ``source_error``); it never stops the others.

MQTT: one :class:`~omnizip_stream.query.mqtt.MqttQueryServer` (one broker connection) serves every
stream (:meth:`~omnizip_stream.query.mqtt.MqttQueryServer.for_streams`); with ``server.admin_token``
streams are added and removed at run time over ``omnizip/server/streams``, and the retained
``omnizip/server/streams/list`` follows every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass, field
from typing import Any

from omnizip_stream.console import Console, status_line
from omnizip_stream.runctl import Terminate, first_of
from omnizip_stream.server.config import ServerConfig, stream_spec_from_mapping
from omnizip_stream.server.service import StreamServer

logger = logging.getLogger(__name__)


@dataclass
class ServeResult:
    """What a serve run ended with: the last stats of every stream, and the signal that stopped it."""

    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    terminated: bool = False  # stopped by SIGTERM (or SIGHUP)


async def serve_streams(config: ServerConfig, mqtt: Any, *, console: Console | None = None,
                        status_interval_s: float = 10.0, http: Any = None) -> ServeResult:
    """Serve every stream of ``config`` on MQTT until SIGTERM (returns) or cancellation (Ctrl-C).

    Args:
        config: the server file.
        mqtt: :class:`~omnizip_stream.app.MqttOptions` (its ``stream_id`` is replaced per stream;
            ``broker`` None starts one embedded broker for all of them); None: no MQTT (HTTP only).
        console: where state changes and status lines go.
        status_interval_s: seconds between status lines (a stream's line is printed when it changed).
        http: :class:`~omnizip_stream.http.settings.HttpSettings` to serve the HTTP API too (None: off).

    Raises:
        ModelLoadError, StreamRefusedError (a configured stream does not fit the model), and the
        MQTT errors of :func:`~omnizip_stream.app.run_stream`.
    """
    from omnizip_stream.app import _start_mqtt

    console = console or Console()
    result = ServeResult()
    terminate = Terminate()
    terminate.install()
    mqtt_failed: list[BaseException] = []

    def mqtt_dead(exc: BaseException) -> None:
        mqtt_failed.append(exc)
        terminate.stop.set()

    def on_change(event: str, info: dict[str, Any]) -> None:
        if event == "added":
            console.note(f"stream {info['id']}: added ({info['source']})")
        elif event == "removed":
            console.note(f"stream {info['id']}: removed")
        else:
            failed = info["state"] in ("retrying", "failed") and info["last_error"]
            console.note(f"stream {info['id']}: {info['state']}" + (f" ({info['last_error']})" if failed else ""))

    try:
        async with contextlib.AsyncExitStack() as stack:
            if http is not None:  # bound before the model loads: a taken port fails at once
                from omnizip_stream.http.runner import bind_socket, serve_http

                http_socket = bind_socket(http)
                stack.callback(http_socket.close)
            server = StreamServer(config)
            server.on_change.append(on_change)
            await stack.enter_async_context(server)
            if http is not None:
                service = await stack.enter_async_context(serve_http(server, http, sock=http_socket))
                console.note(f"HTTP API on {service.url}")
            if mqtt is not None:  # None: HTTP only (--no-mqtt)
                embedded = None
                if mqtt.broker is None:
                    from omnizip_stream.query.broker import EmbeddedBroker

                    embedded = await stack.enter_async_context(EmbeddedBroker(mqtt.broker_port))
                make_spec = functools.partial(stream_spec_from_mapping, defaults=config.defaults)
                await _start_mqtt(stack, mqtt, None, console, on_dead=mqtt_dead, embedded=embedded,
                                  streams=server, admin_token=config.server.admin_token, make_spec=make_spec,
                                  watches=any(spec.watches for spec in config.streams))
            console.note(f"serving {len(server.ids())} stream(s) with one model ({config.defaults.model}); "
                         "SIGTERM or Ctrl-C stops")
            terminate.serving = True
            try:
                await _report(server, console, terminate.stop, status_interval_s)
            finally:
                result.stats = {sid: server.session(sid).stats() for sid in server.ids()}
    except asyncio.CancelledError:
        if not terminate.cancelled_by_signal():
            raise  # Ctrl-C, or a cancellation from outside
    finally:
        terminate.remove()
        console.close()
    if mqtt_failed:  # never serve on silently without the transport
        raise mqtt_failed[0]
    with contextlib.suppress(OSError):
        if terminate.received:
            result.terminated = True
            console.note(f"stopped ({terminate.received})")
        for sid, stats in result.stats.items():
            console.note(f"summary {sid}: {status_line(stats)}")
    return result


async def _report(server: StreamServer, console: Console, stop: asyncio.Event, interval_s: float) -> None:
    """Print each stream's status line every ``interval_s`` while it changes, until ``stop``."""
    last: dict[str, str] = {}
    while not stop.is_set():
        for info in server.describe():
            sid = info["id"]
            line = f"{sid} [{info['state']}] {status_line(server.session(sid).stats())}"
            if last.get(sid) != line:
                console.note(line)
                last[sid] = line
        await first_of(asyncio.sleep(interval_s), stop.wait())
