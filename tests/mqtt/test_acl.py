"""The broker ACL the README recommends, on a real mosquitto: devices read only their own replies, cannot
forge the status, and the service account can publish nowhere but its reply and status topics."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import aiomqtt
import pytest
from mqtt_helpers import FakeService, fast_config, need_binary, serve

from omnizip_stream.query.mqtt_client import MqttQueryClient

pytestmark = pytest.mark.broker

README = Path(__file__).resolve().parents[2] / "README.md"
USERS = {"omnizip": "svc-pw", "alice": "alice-pw", "bob": "bob-pw", "lock": "lock-pw"}
# test-only account: the door lock reads its command topic (the service must never be able to write there)
LOCK_ACL = "\nuser lock\ntopic read home/#\n"


def readme_acl() -> str:
    blocks = re.findall(r"```text\n(.*?)```", README.read_text(), flags=re.S)
    acl = [b for b in blocks if b.startswith("# omnizip broker ACL")]
    assert len(acl) == 1, "README's MQTT section must carry exactly one '# omnizip broker ACL' block"
    return acl[0]


@pytest.fixture
def acl_broker(broker_factory, tmp_path):
    passwd = need_binary("mosquitto_passwd")
    pw = tmp_path / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run([passwd, "-b", *(["-c"] if i == 0 else []), str(pw), user, password], check=True)
    (tmp_path / "acl").write_text(LOCK_ACL + "\n" + readme_acl())  # user sections before the patterns
    b = broker_factory(auth=f"allow_anonymous false\npassword_file {pw}\nacl_file {tmp_path / 'acl'}\n")
    b.start()
    return b


def client(b, user: str, client_id: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", b.port, username=user, password=USERS[user], identifier=client_id,
                          protocol=aiomqtt.ProtocolVersion.V5)


async def messages_until(c: aiomqtt.Client, stop, timeout_s: float = 10.0) -> list:
    """Collect messages until one satisfies ``stop`` (returned last)."""
    got = []
    async with asyncio.timeout(timeout_s):
        async for message in c.messages:
            got.append(message)
            if stop(message):
                return got
    return got


async def test_readme_acl_confines_devices_and_the_service(acl_broker):
    url = acl_broker.url
    service_cfg = fast_config(url, "cam1", username="omnizip", password=USERS["omnizip"],
                              reply_prefix="omnizip/cam1/reply/")
    async with serve(FakeService(), service_cfg):
        async with client(acl_broker, "bob", "bob") as bob, client(acl_broker, "lock", "lock") as lock:
            await lock.subscribe("home/#", qos=1)
            await bob.subscribe("omnizip/cam1/reply/#", qos=1)  # eavesdropping on every reply: not allowed
            await bob.subscribe("omnizip/cam1/reply/bob", qos=1)  # his own: allowed
            # alice, through the bundled client (reply topic omnizip/cam1/reply/<client id>), is answered
            alice_cfg = fast_config(url, "cam1", username="alice", password=USERS["alice"], client_id="alice")
            async with MqttQueryClient(alice_cfg) as alice:
                assert (await alice.ask("alice's secret question", timeout_s=10))["answer"] == \
                    "answer: alice's secret question"
                # alice tries to forge the retained status
                await alice._client.publish("omnizip/cam1/status", json.dumps({"state": "offline"}), qos=1,
                                            retain=True)
            # the service account tries to write to the lock directly (the ACL must stop it)
            async with client(acl_broker, "omnizip", "omnizip-rogue") as rogue:
                await rogue.publish("home/frontdoor/lock/set", b"open", qos=1)
            bob_cfg = fast_config(url, "cam1", username="bob", password=USERS["bob"])
            props = _props("omnizip/cam1/reply/bob", b"bob-1")
            await bob.publish("omnizip/cam1/query", json.dumps({"question": "bob's question"}), qos=1,
                              properties=props)
            got = await messages_until(bob, lambda m: m.properties.CorrelationData == b"bob-1")
            assert [json.loads(m.payload)["answer"] for m in got] == ["answer: bob's question"]  # not alice's
            # the lock saw nothing (checked after bob's round trip, which followed the rogue publish)
            with pytest.raises(TimeoutError):
                await messages_until(lock, lambda m: True, timeout_s=0.5)
            async with MqttQueryClient(bob_cfg) as reader:
                status = await reader.status()
            assert status["state"] == "online" and status["stream_id"] == "cam1"


async def test_readme_acl_lets_a_device_ask_and_the_service_refuses_routes_outside_its_prefix(acl_broker):
    url = acl_broker.url
    service_cfg = fast_config(url, "cam1", username="omnizip", password=USERS["omnizip"],
                              reply_prefix="omnizip/cam1/reply/")
    async with serve(FakeService(), service_cfg) as server:
        async with client(acl_broker, "alice", "alice") as alice:
            await alice.subscribe("omnizip/cam1/reply/alice", qos=1)
            await alice.publish("omnizip/cam1/query", json.dumps({"question": "q1"}), qos=1,
                                properties=_props("home/frontdoor/lock/set", b"x"))
            await alice.publish("omnizip/cam1/query", json.dumps({"question": "q2"}), qos=1,
                                properties=_props("omnizip/cam1/reply/alice", b"ok"))
            got = await messages_until(alice, lambda m: True)
        assert json.loads(got[0].payload)["answer"] == "answer: q2"
        assert server.counters["unroutable"] == 1 and server.counters["connects"] == 1


def _props(topic: str, correlation: bytes):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = topic
    props.CorrelationData = correlation
    return props
