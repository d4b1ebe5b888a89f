"""MqttConfig validation and broker URL parsing (no broker needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnizip_stream.query.mqtt_config import MqttConfig, parse_broker_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1884", {"host": "127.0.0.1", "port": 1884, "tls": False}),
        ("mqtt://broker.local", {"host": "broker.local", "port": 1883, "tls": False}),
        ("mqtts://broker.local", {"host": "broker.local", "port": 8883, "tls": True}),
        ("MQTTS://10.0.0.2:9000/", {"host": "10.0.0.2", "port": 9000, "tls": True}),
        ("mqtt://[::1]:1883", {"host": "::1", "port": 1883, "tls": False}),
        ("mqtt://dev:p%40ss@h:1", {"host": "h", "port": 1, "tls": False, "username": "dev", "password": "p@ss"}),
    ],
)
def test_parse_broker_url(url, expected):
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("127.0.0.1:1883", "no scheme"),
        ("http://127.0.0.1:1883", "scheme must be mqtt or mqtts"),
        ("mqtt://127.0.0.1:99999", "port must be a number"),
        ("mqtt://127.0.0.1:abc", "port must be a number"),
        ("mqtt://:1883", "no host"),
        ("mqtt://h:1883/some/topic", "only mqtt(s)://"),
        ("mqtt://h:1883?x=1", "only mqtt(s)://"),
    ],
)
def test_parse_broker_url_rejects(url, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_broker_url(url)


def test_from_url_topics_and_defaults():
    cfg = MqttConfig.from_url("mqtt://u:pw@h:1", stream_id="cam1", qos=1, username=None)
    assert (cfg.host, cfg.port, cfg.username, cfg.password) == ("h", 1, "u", "pw")  # None overrides ignored
    assert cfg.query_topic == "omnizip/cam1/query"
    assert cfg.status_topic == "omnizip/cam1/status"
    assert cfg.reply_topic("dev7") == "omnizip/cam1/reply/dev7"
    assert cfg.server_client_id == "omnizip-cam1"
    assert cfg.url == "mqtt://h:1"
    assert cfg.redacted()["password"] == "***"
    assert cfg.ssl_context() is None


def test_from_url_overrides_win_and_unknown_options_fail():
    cfg = MqttConfig.from_url("mqtt://u:pw@h", stream_id="s", username="other", password="x")
    assert (cfg.username, cfg.password) == ("other", "x")
    with pytest.raises(ValueError, match="unknown MQTT option.*brokr"):
        MqttConfig.from_url("mqtt://h", stream_id="s", brokr="x")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stream_id": "cam/1"}, "stream_id"),
        ({"stream_id": "cam+"}, "stream_id"),
        ({"stream_id": ""}, "stream_id"),
        ({"stream_id": "#"}, "stream_id"),
        ({"port": 0}, "port must be an integer"),
        ({"password": "x"}, "password was given without a username"),
        ({"ca_file": "/etc/hostname"}, "need an mqtts://"),
        ({"tls": True, "ca_file": "/nonexistent/ca.pem"}, "does not exist"),
        ({"tls": True, "cert_file": "/etc/hostname"}, "both a client certificate and its key"),
        ({"protocol": "4"}, "protocol must be one of"),
        ({"qos": 3}, "qos must be 0, 1 or 2"),
        ({"qos": True}, "qos must be 0, 1 or 2"),
        ({"client_id": "a b"}, "client_id"),
        ({"max_payload_bytes": 10}, "max_payload_bytes"),
        ({"default_max_new_tokens": 600}, "default_max_new_tokens"),
        ({"rate_limit_per_s": -1}, "rate_limit_per_s"),
        ({"rate_limit_per_s": float("nan")}, "rate_limit_per_s"),
        ({"rate_limit_burst": 0}, "rate_limit_burst"),
        ({"max_concurrent_queries": 0}, "max_concurrent_queries"),
        ({"max_queued_queries": -1}, "max_queued_queries"),
        ({"status_interval_s": 0}, "status_interval_s"),
        ({"query_timeout_s": float("inf")}, "query_timeout_s"),
        ({"keepalive_s": 0}, "keepalive_s"),
        ({"reconnect_min_s": 2.0, "reconnect_max_s": 1.0}, "reconnect_max_s"),
        ({"topic_prefix": "a/b"}, "topic_prefix"),
    ],
)
def test_config_validation_messages(kwargs, message):
    base = {"stream_id": "cam1"}
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        MqttConfig(**base)


def test_tls_context_loads_ca(tls_files):
    cfg = MqttConfig(stream_id="s", tls=True, ca_file=str(tls_files["ca"]), tls_insecure=True)
    ctx = cfg.ssl_context()
    assert ctx is not None and ctx.check_hostname is False
    assert MqttConfig(stream_id="s", tls=True, ca_file=str(tls_files["ca"])).ssl_context().check_hostname


def test_bad_ca_file_content_is_value_error(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ValueError, match="is not a PEM certificate"):
        MqttConfig(stream_id="s", tls=True, ca_file=str(bad)).ssl_context()


hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True),
)


@given(host=hosts, port=st.integers(1, 65535), tls=st.booleans())
def test_url_round_trip(host, port, tls):
    cfg = MqttConfig.from_url(f"{'mqtts' if tls else 'mqtt'}://{host}:{port}", stream_id="s")
    assert (cfg.host, cfg.port, cfg.tls) == (host, port, tls)
    assert MqttConfig.from_url(cfg.url, stream_id="s") == cfg
