"""MQTT connections: building aiomqtt clients, permanent refusals vs outages, stream ids in use.

Builds clients from an :class:`MqttConfig`, tells refusals retrying cannot fix from outages, and
finds out whether another live server already answers a stream id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from typing import Any

from omnizip_stream.query.mqtt_config import NODELAY, MqttConfig

# Connection refusals that retrying cannot fix (3.1.1 return codes and MQTT 5 reason codes).
_PERMANENT_CONNACK = {1: "unsupported protocol version", 2: "client id rejected", 4: "bad username or password",
                      5: "not authorised", 0x84: "unsupported protocol version", 0x85: "client id rejected",
                      0x86: "bad username or password", 0x87: "not authorised", 0x8C: "bad authentication method"}


logger = logging.getLogger(__name__)

# MQTT 5 DISCONNECT reason: another connection took over this client id.
SESSION_TAKEN_OVER = 0x8E


class BrokerRefusedError(RuntimeError):
    """The broker refused us in a way retrying cannot fix (credentials, ACL, TLS, protocol)."""


class StreamIdInUseError(BrokerRefusedError):
    """Another live server already answers this stream id on this broker."""


def make_client(config: MqttConfig, client_id: str, *, persistent: bool, will: Any = None,
                queue_type: Any = None) -> Any:
    """Build an unconnected ``aiomqtt.Client`` for ``config`` (use it as ``async with``).

    Args:
        config: broker address, credentials, TLS and protocol.
        client_id: MQTT client id.
        persistent: keep the session across disconnects (MQTT 5: clean start off and
            ``config.session_expiry_s``; 3.1.1: clean session off).
        will: an ``aiomqtt.Will`` (last will) or None.
        queue_type: aiomqtt's ``queue_type`` (a factory of the received-message queue) or None.

    Raises:
        ValueError: a TLS file cannot be loaded.
    """
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    v5 = config.protocol == "5"
    kwargs: dict[str, Any] = {}
    if persistent and v5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = config.session_expiry_s
        kwargs.update(clean_start=False, properties=props)
    elif persistent:
        kwargs.update(clean_session=False)
    if queue_type is not None:
        kwargs["queue_type"] = queue_type
    if config.tls and config.tls_insecure:
        kwargs["tls_insecure"] = True
    client = aiomqtt.Client(
        config.host, config.port, username=config.username, password=config.password, identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311, will=will,
        keepalive=config.keepalive_s, tls_context=config.ssl_context(), socket_options=NODELAY, **kwargs,
    )
    client.pending_calls_threshold = 10_000  # many replies in flight is normal here
    _fail_connect_on_disconnect(client)
    return client


def _fail_connect_on_disconnect(client: Any) -> None:
    """Make ``async with client`` fail at once when the socket closes before the CONNACK.

    aiomqtt ignores a disconnect before the CONNACK and waits its whole timeout (10 s): a broker that
    restarts during the handshake kept the server away that long while questions piled up on the broker
    (which drops them beyond its ``max_queued_messages``). Uses aiomqtt's ``_client``/``_connected``;
    without them (another aiomqtt) the timeout applies as before.
    """
    import aiomqtt

    paho, connected = getattr(client, "_client", None), getattr(client, "_connected", None)
    if paho is None or not isinstance(connected, asyncio.Future) or paho.on_disconnect is None:
        return
    aiomqtt_on_disconnect = paho.on_disconnect

    def on_disconnect(*args: Any) -> None:
        connected_now = getattr(client, "_connected", None)  # aiomqtt replaces it after a failed attempt
        if isinstance(connected_now, asyncio.Future) and not connected_now.done():
            reason = args[3] if len(args) > 3 else "?"
            connected_now.set_exception(aiomqtt.MqttError(f"connection closed before the CONNACK ({reason})"))
        aiomqtt_on_disconnect(*args)

    paho.on_disconnect = on_disconnect


def permanent_reason(exc: Exception, config: MqttConfig) -> str | None:
    """Why a connection error cannot be fixed by retrying, or None if it may be transient."""
    rc = getattr(exc, "rc", None)
    code = int(getattr(rc, "value", rc)) if rc is not None else None
    if type(exc).__name__ == "MqttConnectError" and code in _PERMANENT_CONNACK:
        reason = _PERMANENT_CONNACK[code]
        if "protocol" in reason and config.protocol == "5":
            reason += " (the broker may speak only MQTT 3.1.1: use protocol 3.1.1)"
        return reason
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return f"TLS certificate not trusted ({text}); pass the broker's CA file"
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return "TLS handshake failed: is this port really mqtts:// (TLS)?"
    return None


def taken_over(exc: Exception) -> bool:
    """True if ``exc`` is the MQTT 5 disconnect sent when another client connected with our client id."""
    rc = getattr(exc, "rc", None)
    if rc is None and exc.__cause__ is not None:
        rc = getattr(exc.__cause__, "rc", None)
    return rc is not None and int(getattr(rc, "value", rc)) == SESSION_TAKEN_OVER


async def live_server_instance(config: MqttConfig, own_instance: str, *, max_wait_s: float = 10.0) -> str | None:
    """The instance id of another server answering ``config.stream_id`` right now, or None.

    Reads the retained status. ``online`` from another instance is only trusted once that server
    shows it is alive: it answers a probe request (an empty question, refused with ``bad_request``
    at no cost) or refreshes its status. A stale ``online`` (a server killed before its last will
    was published) therefore costs at most ``1.5 x`` its status interval (capped at ``max_wait_s``).
    A probe answered ``unknown_stream`` (a many-stream server on ``<prefix>/+/query`` that does not
    serve this id; the stale ``online`` of a stream such a server served before it crashed) proves
    nothing: only a refresh of the status counts then.

    Raises:
        aiomqtt.MqttError: the broker cannot be reached (the caller's reconnect loop handles it).
    """
    probe_id = f"omnizip-probe-{uuid.uuid4().hex[:12]}"
    reply_topic = config.reply_topic(probe_id)
    async with make_client(config, probe_id, persistent=False) as client:
        granted = await client.subscribe([(config.status_topic, 1), (reply_topic, 1)])
        if any(int(getattr(g, "value", g)) >= 0x80 for g in granted):
            logger.info("cannot check for another server on %s: the broker's ACL refuses the status or reply topic",
                        config.status_topic)
            return None
        # The broker sends the retained status right after the SUBACK, before this marker comes back.
        await client.publish(reply_topic, json.dumps({"marker": probe_id}), qos=1)
        messages = aiter(client.messages)
        deadline = time.monotonic() + 2.0
        other: str | None = None
        probed = False
        while True:
            try:
                message = await asyncio.wait_for(anext(messages), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return None
            body = _json(message.payload)
            if message.topic.matches(reply_topic):
                if "marker" in body:
                    if not probed:
                        return None  # no retained status
                    continue
                code = (body.get("error") or {}).get("code") if isinstance(body.get("error"), dict) else None
                if code == "unknown_stream" and config.stream_id != "server":
                    continue  # a many-stream server that does not serve this id (maybe this very one) answered
                return other  # it answered the probe
            state, instance = body.get("state"), body.get("instance")
            if probed:
                if state == "offline":
                    return None
                if state == "online" and instance == other and not message.retain:
                    return other  # it refreshed its status
                continue
            if state != "online" or instance == own_instance:
                return None
            other = str(instance)
            probed = True
            await client.publish(config.query_topic, json.dumps(
                {"question": "", "id": probe_id, "reply_to": reply_topic}), qos=1)
            interval_s = body.get("status_interval_s")
            if not isinstance(interval_s, (int, float)) or not math.isfinite(interval_s) or interval_s <= 0:
                interval_s = 5.0
            deadline = time.monotonic() + min(max_wait_s, 1.5 * float(interval_s) + 0.5)


def _json(payload: Any) -> dict[str, Any]:
    with contextlib.suppress(ValueError, TypeError, UnicodeDecodeError):
        obj = json.loads(payload)
        if isinstance(obj, dict):
            return obj
    return {}
