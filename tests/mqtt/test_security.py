"""Users, ACL and TLS on a private mosquitto: a device may only query its own stream."""

from __future__ import annotations

import asyncio
import json
import subprocess

import aiomqtt
import pytest
from mqtt_helpers import FakeService, Mosquitto, fast_config, need_binary, serve

from omnizip_stream.query.broker import free_port
from omnizip_stream.query.mqtt import BrokerRefusedError
from omnizip_stream.query.mqtt_client import MqttQueryClient

pytestmark = pytest.mark.broker

USERS = {"service": "svc-secret", "cam1": "cam1-secret", "cam2": "cam2-secret"}
ACL = """user service
topic readwrite omnizip/#

# a device publishes questions only to its own stream and reads only its own replies and status
pattern write omnizip/%u/query
pattern read omnizip/%u/reply/#
pattern read omnizip/%u/status
"""


@pytest.fixture(scope="module")
def secure_broker(mosquitto_bin, tls_files, tmp_path_factory):
    passwd = need_binary("mosquitto_passwd")
    d = tmp_path_factory.mktemp("secure")
    pw = d / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run([passwd, "-b", *(["-c"] if i == 0 else []), str(pw), user, password], check=True)
    (d / "acl").write_text(ACL)
    tls_port = free_port()
    b = Mosquitto(
        d,
        extra_listeners=(f"listener {tls_port} 127.0.0.1\ncafile {tls_files['ca']}\n"
                         f"certfile {tls_files['cert']}\nkeyfile {tls_files['key']}\n"),
        auth=f"allow_anonymous false\npassword_file {pw}\nacl_file {d / 'acl'}\n",
    )
    b.start(ports=(tls_port,))
    b.tls_port = tls_port
    yield b
    b.stop()


def cfg(url, stream_id, user, **kw):
    return fast_config(url, stream_id, username=user, password=USERS[user], **kw)


async def test_acl_device_cannot_query_another_stream(secure_broker):
    url = secure_broker.url
    cam1_service, cam2_service = FakeService(), FakeService()
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    async with serve(cam1_service, cfg(url, "cam1", "service")), \
            serve(cam2_service, cfg(url, "cam2", "service")) as cam2_server:
        async with aiomqtt.Client("127.0.0.1", secure_broker.port, username="cam1", password=USERS["cam1"],
                                  protocol=aiomqtt.ProtocolVersion.V5) as cam1:
            await cam1.subscribe("omnizip/cam1/reply/raw", qos=1)
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "omnizip/cam1/reply/raw"
            await cam1.publish("omnizip/cam2/query", json.dumps({"question": "spy on cam2"}), qos=1,
                               properties=props)
            await cam1.publish("omnizip/cam1/query", json.dumps({"question": "my own stream"}), qos=1,
                               properties=props)
            async with asyncio.timeout(10):
                reply = json.loads((await anext(aiter(cam1.messages))).payload)
        assert reply["answer"] == "answer: my own stream"
        # cam2 asks its own stream; had the broker let cam1's message through, it would have reached the
        # cam2 server before this one.
        async with MqttQueryClient(cfg(url, "cam2", "cam2")) as cam2:
            assert (await cam2.ask("legit", timeout_s=10))["answer"] == "answer: legit"
        assert cam2_server.counters["received"] == 1
    assert [q for q, _ in cam2_service.calls] == ["legit"]
    assert [q for q, _ in cam1_service.calls] == ["my own stream"]


@pytest.mark.parametrize(("user", "password"), [(None, None), ("cam1", "wrong")])
async def test_client_with_bad_credentials_gets_clear_error(secure_broker, user, password):
    config = fast_config(secure_broker.url, "cam1", username=user, password=password)
    with pytest.raises(ConnectionError, match=r"cannot connect to mqtt://127\.0\.0\.1:\d+: .*(password|authori[sz]ed)"):
        async with MqttQueryClient(config):
            pass


async def test_server_with_bad_credentials_stops_with_clear_error(secure_broker):
    from omnizip_stream.query.mqtt import MqttQueryServer

    server = MqttQueryServer(FakeService(), fast_config(secure_broker.url, "cam1", username="service",
                                                        password="nope"))
    with pytest.raises(BrokerRefusedError, match="refused the connection"):
        await asyncio.wait_for(server.run(), 10)


async def test_tls_with_ca_file(secure_broker, tls_files):
    url = f"mqtts://127.0.0.1:{secure_broker.tls_port}"
    service = FakeService()
    async with serve(service, cfg(url, "cam1", "service", ca_file=str(tls_files["ca"]))):
        async with MqttQueryClient(cfg(url, "cam1", "cam1", ca_file=str(tls_files["ca"]))) as client:
            reply = await client.ask("over tls", timeout_s=10)
    assert reply["answer"] == "answer: over tls"


async def test_tls_without_the_ca_is_refused_clearly(secure_broker):
    url = f"mqtts://127.0.0.1:{secure_broker.tls_port}"
    with pytest.raises(ConnectionError, match="certificate"):
        async with MqttQueryClient(cfg(url, "cam1", "cam1")):
            pass
    from omnizip_stream.query.mqtt import MqttQueryServer

    server = MqttQueryServer(FakeService(), cfg(url, "cam1", "service"))
    with pytest.raises(BrokerRefusedError, match="CA file"):
        await asyncio.wait_for(server.run(), 10)
