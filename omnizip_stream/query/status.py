"""Retained status of the MQTT query server: one stream's, or the server's, every stream's and the list.

See :mod:`~omnizip_stream.query.streams` for the topics. Mixed into
:class:`~omnizip_stream.query.mqtt.MqttQueryServer` (it uses the server's config, streams,
instance id and counters).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from omnizip_stream.query.mqtt_config import MqttConfig
from omnizip_stream.query.schema import encode, json_safe
from omnizip_stream.query.streams import SERVER_ID, StreamDirectory, describe_memory, describe_streams, lookup


class StatusPublishing:
    """Builds and publishes the retained status messages (see the module docstring)."""

    config: MqttConfig
    streams: StreamDirectory
    routed: bool
    instance: str
    _changed: asyncio.Event  # the set of streams changed: republish the list and statuses
    _announced: set[str]  # streams whose status was published online
    _loop: asyncio.AbstractEventLoop | None

    def stats(self) -> dict[str, Any]:
        """Transport counters (the server's)."""
        raise NotImplementedError

    def _streams_changed(self) -> None:
        """Republish the list and statuses soon (callable from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._changed.set()
        else:
            loop.call_soon_threadsafe(self._changed.set)

    @property
    def list_topic(self) -> str:
        """Retained list of the streams served (many-stream servers)."""
        return f"{self.config.topic_prefix}/{SERVER_ID}/streams/list"

    async def _publish_status(self, client: Any, state: str, reason: str) -> None:
        """Publish the retained status(es), best effort (2 s)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._publish_statuses(client, state, reason, with_list=True), 2.0)

    async def _publish_statuses(self, client: Any, state: str, reason: str | None = None, *,
                                with_list: bool = False) -> None:
        """Publish the retained status: the stream's, or the server's and every stream's (and the list).

        A stream published ``online`` before and no longer served is published ``offline`` with
        reason ``removed``. Going offline, every announced stream goes offline with the server.
        """
        cfg = self.config
        await client.publish(cfg.status_topic, encode(self._status(state, reason)), qos=cfg.qos, retain=True)
        if not self.routed:
            return
        ids = [s for s in self.streams.ids() if s != SERVER_ID] if state == "online" else []
        for stream_id in [s for s in self._announced if s not in ids]:
            why = reason if state != "online" else "removed"
            await client.publish(self._stream_status_topic(stream_id),
                                 encode(self._status("offline", why, stream_id=stream_id, stats=False)),
                                 qos=cfg.qos, retain=True)
            self._announced.discard(stream_id)
        for stream_id in ids:
            await client.publish(self._stream_status_topic(stream_id),
                                 encode(self._status(state, reason, stream_id=stream_id)), qos=cfg.qos, retain=True)
            self._announced.add(stream_id)
        if with_list:
            body = {"state": state, "instance": self.instance, "ts": round(time.time(), 3),
                    "streams": describe_streams(self.streams) if state == "online" else []}
            if state == "online" and (memory := describe_memory(self.streams)) is not None:
                body["memory"] = memory  # the KV budget: what a new stream can still reserve
            await client.publish(self.list_topic, encode(body), qos=cfg.qos, retain=True)

    def _stream_status_topic(self, stream_id: str) -> str:
        return f"{self.config.topic_prefix}/{stream_id}/status"

    async def _status_loop(self, client: Any) -> None:
        """Every ``status_interval_s``, and at once when the streams change: the retained status(es)."""
        cfg = self.config
        while True:
            # asyncio.wait, not wait_for: Python 3.11's wait_for can swallow a cancellation that comes as
            # the event is set (the loop would then outlive the connection's shutdown)
            waiter = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({waiter}, timeout=cfg.status_interval_s)
            finally:
                waiter.cancel()
            changed = self._changed.is_set()
            self._changed.clear()
            await self._publish_statuses(client, "online", with_list=changed)

    def _status(self, state: str, reason: str | None = None, *, stats: bool = True,
                stream_id: str | None = None) -> dict[str, Any]:
        """The status JSON of ``stream_id`` (default: the config's stream, or the server itself)."""
        cfg = self.config
        sid = stream_id or cfg.stream_id
        out: dict[str, Any] = {"state": state, "stream_id": sid, "protocol": cfg.protocol,
                               "query_topic": f"{cfg.topic_prefix}/{sid}/query", "instance": self.instance,
                               "status_interval_s": cfg.status_interval_s}
        if self.routed and stream_id is None:
            out["query_topic"] = f"{cfg.topic_prefix}/+/query"
        if reason is not None:
            out["reason"] = reason
        if stats:
            out["ts"] = round(time.time(), 3)
            out["server"] = self.stats()
            if self.routed and stream_id is None:
                out["streams"] = self.streams.ids()
                return out
            try:
                service = lookup(self.streams, sid)
                out["session"] = json_safe(service.stats()) if service is not None else {}
            except Exception as exc:  # a broken stats() must not take the transport down
                out["session"] = {"error": f"{type(exc).__name__}: {exc}"}
        return out
