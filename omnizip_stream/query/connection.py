"""Building aiomqtt clients from an :class:`MqttConfig`, and telling permanent refusals from outages."""

from __future__ import annotations

from typing import Any

from omnizip_stream.query.mqtt_config import NODELAY, MqttConfig

# Connection refusals that retrying cannot fix (3.1.1 return codes and MQTT 5 reason codes).
_PERMANENT_CONNACK = {1: "unsupported protocol version", 2: "client id rejected", 4: "bad username or password",
                      5: "not authorised", 0x84: "unsupported protocol version", 0x85: "client id rejected",
                      0x86: "bad username or password", 0x87: "not authorised", 0x8C: "bad authentication method"}


class BrokerRefusedError(RuntimeError):
    """The broker refused us in a way retrying cannot fix (credentials, ACL, TLS, protocol)."""


def make_client(config: MqttConfig, client_id: str, *, persistent: bool, will: Any = None) -> Any:
    """Build an unconnected ``aiomqtt.Client`` for ``config`` (use it as ``async with``).

    Args:
        config: broker address, credentials, TLS and protocol.
        client_id: MQTT client id.
        persistent: keep the session across disconnects (MQTT 5: clean start off and
            ``config.session_expiry_s``; 3.1.1: clean session off).
        will: an ``aiomqtt.Will`` (last will) or None.

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
    if config.tls and config.tls_insecure:
        kwargs["tls_insecure"] = True
    client = aiomqtt.Client(
        config.host, config.port, username=config.username, password=config.password, identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311, will=will,
        keepalive=config.keepalive_s, tls_context=config.ssl_context(), socket_options=NODELAY, **kwargs,
    )
    client.pending_calls_threshold = 10_000  # many replies in flight is normal here
    return client


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
