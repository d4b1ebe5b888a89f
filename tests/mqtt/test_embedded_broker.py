"""The embedded broker for single-machine demos."""

from __future__ import annotations

import logging
import sys

import pytest
from mqtt_helpers import FakeService, fast_config, serve

from omnizip_stream.query import broker as broker_mod
from omnizip_stream.query.broker import BrokerUnavailableError, EmbeddedBroker, mosquitto_config
from omnizip_stream.query.mqtt_client import MqttQueryClient


@pytest.mark.broker
async def test_embedded_mosquitto_starts_serves_and_says_so(mosquitto_bin, stream_id, caplog):
    caplog.set_level(logging.WARNING, logger="omnizip_stream.query.broker")
    async with EmbeddedBroker() as b:
        assert b.kind == "mosquitto" and b.supports_v5
        assert f"EMBEDDED MQTT broker (mosquitto) at {b.url}" in caplog.text
        service = FakeService()
        async with serve(service, fast_config(b.url, stream_id)):
            async with MqttQueryClient(fast_config(b.url, stream_id)) as client:
                assert (await client.ask("demo?", timeout_s=10))["answer"] == "answer: demo?"
    with pytest.raises(ConnectionError):  # stopped
        async with MqttQueryClient(fast_config(b.url, stream_id)):
            pass


async def test_embedded_amqtt_fallback_when_mosquitto_is_missing(monkeypatch, stream_id, caplog):
    pytest.importorskip("amqtt.broker", reason="amqtt is not installed (pip install amqtt)")
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: None)
    caplog.set_level(logging.WARNING, logger="omnizip_stream.query.broker")
    async with EmbeddedBroker() as b:
        assert b.kind == "amqtt" and not b.supports_v5
        assert "MQTT 3.1.1 only" in caplog.text
        cfg = fast_config(b.url, stream_id, protocol="3.1.1")
        async with serve(FakeService(), cfg), MqttQueryClient(cfg) as client:
            assert (await client.ask("fallback?", timeout_s=10))["answer"] == "answer: fallback?"


async def test_no_broker_available_gives_actionable_error(monkeypatch):
    monkeypatch.setattr(broker_mod, "find_mosquitto", lambda: None)
    monkeypatch.setitem(sys.modules, "amqtt", None)  # makes `import amqtt.broker` fail
    with pytest.raises(BrokerUnavailableError, match=r"install mosquitto .* or pass --broker"):
        await EmbeddedBroker().start()


def test_generated_mosquitto_config_has_nodelay_and_loopback_listener():
    text = mosquitto_config(18831)
    assert "set_tcp_nodelay true" in text
    assert "listener 18831 127.0.0.1" in text
    import os

    assert ("user root" in text) == (os.geteuid() == 0)
