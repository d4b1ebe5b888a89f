"""Adding, removing and listing streams at run time over MQTT (<prefix>/server/streams), authenticated."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from pathlib import Path

import pytest
from mqtt_helpers import FakeService, FakeStreams, fast_config, retained, serve, serve_streams

from omnizip_stream.query.base import QueryError
from omnizip_stream.query.mqtt_client import MqttQueryClient


@pytest.fixture
def broker(broker, module_amqtt):
    """The shared broker; on amqtt this module's own (see ``module_amqtt``: amqtt leaks wildcard subscriptions)."""
    return module_amqtt if module_amqtt is not None else broker


pytestmark = pytest.mark.broker

TOKEN = "s3cret-admin-token-4242"
ADMIN_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mqtt_streams.py"


class AdmissionRefused(ValueError):
    """What the stream server raises when a stream does not fit its memory budget."""


@pytest.fixture
def prefix() -> str:
    return f"p{uuid.uuid4().hex[:10]}"


def admin(broker, prefix, **overrides):
    """A client of the server's own topics (replies on <prefix>/server/reply/<id>)."""
    return MqttQueryClient(fast_config(broker.url, "server", topic_prefix=prefix, **overrides))


async def control(client, prefix, body, timeout_s=10.0):
    return await client.request(body, topic=f"{prefix}/server/streams", timeout_s=timeout_s)


async def test_add_a_stream_then_query_it_and_the_list_is_published(broker, prefix):
    streams = FakeStreams(door=FakeService())
    async with serve_streams(streams, fast_config(broker.url, "server", topic_prefix=prefix), admin_token=TOKEN):
        before = await retained(broker.port, f"{prefix}/server/streams/list")
        async with admin(broker, prefix) as client:
            reply = await control(client, prefix, {"op": "add", "token": TOKEN, "stream": {
                "id": "garage", "source": "rtsp://admin:pw@10.0.0.5/live", "rho_video": 0.7}})
        assert reply["ok"] is True and reply["op"] == "add" and reply["stream_id"] == "garage"
        assert [s["id"] for s in reply["streams"]] == ["door", "garage"]
        assert streams.added == [{"id": "garage", "source": "rtsp://admin:pw@10.0.0.5/live", "rho_video": 0.7}]
        listed = await retained(broker.port, f"{prefix}/server/streams/list",
                                lambda body: len(body.get("streams", [])) == 2)
        status = await retained(broker.port, f"{prefix}/garage/status")
        async with MqttQueryClient(fast_config(broker.url, "garage", topic_prefix=prefix)) as garage:
            answer = await garage.ask("is the car there?", timeout_s=10)
    assert [s["id"] for s in before["streams"]] == ["door"] and before["state"] == "online"
    garage_item = listed["streams"][1]
    assert garage_item["id"] == "garage" and garage_item["state"] == "running"
    assert "pw" not in garage_item["source"] and "10.0.0.5" in garage_item["source"]  # redacted
    assert "pw" not in json.dumps(reply)
    assert status["state"] == "online" and status["stream_id"] == "garage"
    assert answer["stream_id"] == "garage" and answer["answer"] == "answer: is the car there?"


async def test_remove_a_stream_its_status_goes_offline_and_its_questions_get_unknown_stream(broker, prefix):
    streams = FakeStreams(door=FakeService(), attic=FakeService())
    async with serve_streams(streams, fast_config(broker.url, "server", topic_prefix=prefix), admin_token=TOKEN):
        assert (await retained(broker.port, f"{prefix}/attic/status"))["state"] == "online"
        async with admin(broker, prefix) as client:
            reply = await control(client, prefix, {"op": "remove", "token": TOKEN, "stream_id": "attic"})
            again = await control(client, prefix, {"op": "remove", "token": TOKEN, "stream_id": "attic"})
            listed = await control(client, prefix, {"op": "list", "token": TOKEN})
        assert reply["ok"] is True and [s["id"] for s in reply["streams"]] == ["door"]
        assert again["ok"] is False and again["error"]["code"] == "unknown_stream"
        assert [s["id"] for s in listed["streams"]] == ["door"]
        status = await retained(broker.port, f"{prefix}/attic/status", lambda body: body["state"] == "offline")
        assert status["reason"] == "removed"
        assert [s["id"] for s in (await retained(broker.port, f"{prefix}/server/streams/list",
                                                 lambda body: len(body["streams"]) == 1))["streams"]] == ["door"]
        async with MqttQueryClient(fast_config(broker.url, "attic", topic_prefix=prefix)) as attic:
            with pytest.raises(QueryError) as info:
                await attic.ask("anything up there?", timeout_s=10)
    assert info.value.code == "unknown_stream"


async def test_wrong_or_missing_token_is_unauthorized_counted_and_never_logged(broker, prefix, caplog):
    caplog.set_level(logging.DEBUG)
    streams = FakeStreams(door=FakeService())
    wrong = "not-the-token-" + uuid.uuid4().hex
    async with serve_streams(streams, fast_config(broker.url, "server", topic_prefix=prefix),
                             admin_token=TOKEN) as server:
        async with admin(broker, prefix) as client:
            bad = await control(client, prefix, {"op": "add", "token": wrong, "stream": {"id": "x", "source": "y"}})
            missing = await control(client, prefix, {"op": "remove", "stream_id": "door"})
            typed = await control(client, prefix, {"op": "list", "token": 12345})
    for reply in (bad, missing, typed):
        assert reply["ok"] is False and reply["error"]["code"] == "unauthorized"
    assert streams.ids() == ["door"] and streams.added == []
    assert server.errors["unauthorized"] == 3
    assert wrong not in caplog.text and TOKEN not in caplog.text


async def test_without_an_admin_token_control_is_forbidden(broker, prefix):
    streams = FakeStreams(door=FakeService())
    async with serve_streams(streams, fast_config(broker.url, "server", topic_prefix=prefix)) as server:
        async with admin(broker, prefix) as client:
            reply = await control(client, prefix, {"op": "add", "token": TOKEN, "stream": {"id": "x", "source": "y"}})
    assert reply["error"]["code"] == "forbidden" and streams.added == []
    assert server.errors["forbidden"] == 1


async def test_wrong_tokens_are_rate_limited_like_questions(broker, prefix):
    streams = FakeStreams(door=FakeService())
    cfg = fast_config(broker.url, "server", topic_prefix=prefix, rate_limit_per_s=0.01, rate_limit_burst=3)
    async with serve_streams(streams, cfg, admin_token=TOKEN):
        async with admin(broker, prefix) as client:
            codes = [(await control(client, prefix, {"op": "list", "token": f"guess{i}"}))["error"]["code"]
                     for i in range(6)]
    assert codes == ["unauthorized"] * 3 + ["rate_limited"] * 3


async def test_bad_requests_duplicates_and_refused_admission_are_error_replies(broker, prefix):
    streams = FakeStreams(door=FakeService())
    streams.refuse["huge"] = AdmissionRefused("does not fit the KV budget: 900 MB free, the stream needs 1200 MB")
    async with serve_streams(streams, fast_config(broker.url, "server", topic_prefix=prefix),
                             admin_token=TOKEN) as server:
        async with admin(broker, prefix) as client:
            topic = f"{prefix}/server/streams"
            damaged = json.dumps({"reply_to": client.reply_topic, "id": "nj"})[:-1] + ', "op": add'
            not_json = await client.request(damaged.encode(), topic=topic, timeout_s=10, request_id="nj")
            cases = {
                "unknown_op": {"op": "explode", "token": TOKEN},
                "unknown_field": {"op": "list", "token": TOKEN, "extra": 1},
                "no_stream": {"op": "add", "token": TOKEN},
                "bad_id": {"op": "add", "token": TOKEN, "stream": {"id": "a/b", "source": "x"}},
                "reserved_id": {"op": "add", "token": TOKEN, "stream": {"id": "server", "source": "x"}},
                "no_source": {"op": "add", "token": TOKEN, "stream": {"id": "ok"}},
                "duplicate": {"op": "add", "token": TOKEN, "stream": {"id": "door", "source": "x"}},
                "refused": {"op": "add", "token": TOKEN, "stream": {"id": "huge", "source": "x"}},
            }
            replies = {name: await control(client, prefix, body) for name, body in cases.items()}
            still = await control(client, prefix, {"op": "list", "token": TOKEN})
        async with MqttQueryClient(fast_config(broker.url, "door", topic_prefix=prefix)) as door:
            alive = await door.ask("still answering?", timeout_s=10)
    assert not_json["ok"] is False and not_json["error"]["code"] == "bad_request"
    codes = {name: r["error"]["code"] for name, r in replies.items()}
    assert codes == {"unknown_op": "bad_request", "unknown_field": "bad_request", "no_stream": "bad_request",
                     "bad_id": "bad_request", "reserved_id": "bad_request", "no_source": "bad_request",
                     "duplicate": "conflict", "refused": "refused"}
    assert "900 MB free" in replies["refused"]["error"]["message"]
    assert [s["id"] for s in still["streams"]] == ["door"] and alive["ok"] is True
    assert server.counters["loop_errors"] == 0 and server.counters["handler_errors"] == 0


@pytest.mark.mqtt5
async def test_control_over_mqtt5_echoes_the_correlation_data(broker, prefix):
    streams = FakeStreams(door=FakeService())
    async with serve_streams(streams, fast_config(broker.url, "server", topic_prefix=prefix), admin_token=TOKEN):
        async with admin(broker, prefix, protocol="5") as client:
            reply = await control(client, prefix, {"op": "add", "token": TOKEN,
                                                   "stream": {"id": "porch", "source": "camera:0"}})
    assert reply["ok"] is True and streams.ids() == ["door", "porch"]


async def test_a_real_stream_server_adds_answers_and_removes_a_stream_over_mqtt(broker, prefix, tiny25):
    """The tiny model behind StreamServer: add a stream over MQTT, ask it, see its status, remove it."""
    from omni_helpers import make_adapter

    from omnizip_stream.config import StreamConfig
    from omnizip_stream.server.config import (
        ServerConfig,
        ServerSettings,
        StreamSpec,
        stream_spec_from_mapping,
    )
    from omnizip_stream.server.service import StreamServer

    defaults = StreamConfig(model="tiny", method="omnizip", max_new_tokens=6, max_question_tokens=32,
                            video_max_pixels=56 * 56, window_queue=16)
    door = StreamSpec("door", "synthetic", defaults, realtime=False, duration_s=6.0, max_side=112)
    config = ServerConfig(defaults, ServerSettings(admin_token=TOKEN), (door,))
    make_spec = functools.partial(stream_spec_from_mapping, defaults=defaults)
    mqtt = fast_config(broker.url, "server", topic_prefix=prefix)
    async with StreamServer(config, adapter=make_adapter(tiny25, video_max_pixels=56 * 56)) as streams, \
            serve_streams(streams, mqtt, admin_token=config.server.admin_token, make_spec=make_spec):
        async with admin(broker, prefix) as client:
            added = await control(client, prefix, {"op": "add", "token": TOKEN, "stream": {
                "id": "yard", "source": "synthetic:seed=5", "realtime": False, "duration_s": 6, "max_side": 112,
                "rho_video": 0.3}}, timeout_s=60)
            assert added["ok"] is True, added
            assert [(s["id"], s["source"]) for s in added["streams"]] == [("door", "synthetic"),
                                                                         ("yard", "synthetic:seed=5")]
            yard_config = streams.session("yard").config
            assert getattr(yard_config, "compression", yard_config).rho_video == 0.3  # the override reached it
            async with MqttQueryClient(fast_config(broker.url, "yard", topic_prefix=prefix)) as yard:
                answer = await yard.ask("what do you see?", timeout_s=60)
            status = await retained(broker.port, f"{prefix}/yard/status",
                                    lambda body: body.get("session", {}).get("windows_ingested", 0) > 0)
            removed = await control(client, prefix, {"op": "remove", "token": TOKEN, "stream_id": "yard"},
                                    timeout_s=60)
            assert removed["ok"] is True and [s["id"] for s in removed["streams"]] == ["door"]
            assert streams.ids() == ["door"]
            gone = await retained(broker.port, f"{prefix}/yard/status", lambda body: body["state"] == "offline")
            async with MqttQueryClient(fast_config(broker.url, "yard", topic_prefix=prefix)) as yard:
                with pytest.raises(QueryError) as info:
                    await yard.ask("still there?", timeout_s=10)
    assert answer["stream_id"] == "yard" and answer["window_range"] is not None and answer["tokens_generated"] > 0
    assert {"windows_ingested", "video_dropped", "window_lag_s", "kv_tokens"} <= set(status["session"])
    assert gone["reason"] == "removed" and info.value.code == "unknown_stream"


@pytest.mark.mosquitto
async def test_adding_an_id_another_live_server_answers_is_a_conflict_but_a_stale_status_is_not(broker, prefix):
    """The stream-id-in-use check of serve-mqtt, on add: a live one-stream server keeps its id; a dead one's
    retained 'online' (no last will for per-stream statuses) does not block the id for ever."""
    import aiomqtt

    streams = FakeStreams(door=FakeService())
    async with aiomqtt.Client("127.0.0.1", broker.port) as raw:
        await raw.publish(f"{prefix}/ghost/status", json.dumps(
            {"state": "online", "instance": "crashed-before", "status_interval_s": 0.2}), qos=1, retain=True)
    one = fast_config(broker.url, "cam", topic_prefix=prefix)
    async with serve(FakeService(), one), \
            serve_streams(streams, fast_config(broker.url, "server", topic_prefix=prefix), admin_token=TOKEN):
        async with admin(broker, prefix) as client:
            taken = await control(client, prefix, {"op": "add", "token": TOKEN,
                                                   "stream": {"id": "cam", "source": "camera"}})
            stale = await control(client, prefix, {"op": "add", "token": TOKEN,
                                                   "stream": {"id": "ghost", "source": "camera"}})
    assert taken["ok"] is False and taken["error"]["code"] == "conflict"
    assert stale["ok"] is True and streams.ids() == ["door", "ghost"]


@pytest.mark.mqtt5  # the CLI speaks MQTT 5 to a --broker (amqtt speaks only 3.1.1)
def test_omnizip_serve_adds_a_stream_over_mqtt_with_the_token_of_its_environment(tmp_path, broker):
    """The CLI wiring: ``omnizip serve --config FILE --broker URL`` with OMNIZIP_ADMIN_TOKEN; add, ask, list."""
    import asyncio
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    from mqtt_helpers import default_protocol

    config = tmp_path / "server.yaml"
    config.write_text(textwrap.dedent("""\
        model: tiny
        max_new_tokens: 3
        video_max_pixels: 3136
        streams:
          - {id: door, source: "synthetic:seed=1,size=64x64"}
        """))
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "OMNIZIP_ADMIN_TOKEN": TOKEN}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "omnizip_stream.cli", "serve", "--config", str(config),
                                 "--broker", broker.url], stdout=log, stderr=subprocess.STDOUT, env=env)
    protocol = default_protocol(broker.url)

    async def exercise() -> tuple[dict, dict, dict]:
        # the server is up (its model loads first) once its own status is online
        await retained(broker.port, "omnizip/server/status", lambda body: body.get("state") == "online", 110)
        async with MqttQueryClient(fast_config(broker.url, "server", protocol=protocol)) as client:
            added = await control(client, "omnizip", {"op": "add", "token": TOKEN, "stream": {
                "id": "porch", "source": "synthetic:seed=3,size=64x64"}}, timeout_s=60)
        listed = await retained(broker.port, "omnizip/server/streams/list",
                                lambda body: [s["id"] for s in body.get("streams", [])] == ["door", "porch"])
        async with MqttQueryClient(fast_config(broker.url, "porch", protocol=protocol)) as porch:
            answer = await porch.ask("what is on the porch?", timeout_s=60)
        return added, listed, answer

    try:
        deadline = time.monotonic() + 120
        added, listed, answer = asyncio.run(asyncio.wait_for(exercise(), deadline - time.monotonic()))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(20)
    output = log_path.read_text()
    assert added["ok"] is True and added["stream_id"] == "porch"
    assert listed["state"] == "online" and answer["stream_id"] == "porch" and answer["window_range"] is not None
    # the shared KV budget travels with the list and the control replies: what each stream reserved
    assert set(listed["memory"]["streams"]) == {"door", "porch"} and listed["memory"]["reserved_mb"] > 0
    assert set(added["memory"]) == {"budget_mb", "reserved_mb", "free_mb", "streams"}
    assert "stream porch: added" in output and "omnizip/server/streams (on)" in output
    assert TOKEN not in output and "Traceback" not in output


# The README ACL's service and device lines, plus what a many-stream server and its admin need.
MULTI_ACL = """\
user omnizip
topic read omnizip/+/query
topic readwrite omnizip/+/status
topic write omnizip/+/reply/#
topic read omnizip/server/streams
topic write omnizip/server/streams/list

user admin
topic write omnizip/server/streams
topic read omnizip/server/reply/#

pattern write omnizip/+/query
pattern read omnizip/+/status
pattern read omnizip/+/reply/%c
pattern read omnizip/+/reply/%c/#
pattern read omnizip/server/streams/list
"""


ACL_USERS = {"omnizip": "svc-pw", "admin": "admin-pw", "alice": "alice-pw"}


@pytest.fixture
def multi_acl_broker(broker_factory, tmp_path):
    import subprocess

    from mqtt_helpers import need_binary

    passwd = need_binary("mosquitto_passwd")
    pw = tmp_path / "passwd"
    for i, (user, password) in enumerate(ACL_USERS.items()):
        subprocess.run([passwd, "-b", *(["-c"] if i == 0 else []), str(pw), user, password], check=True)
    (tmp_path / "acl").write_text(MULTI_ACL)
    b = broker_factory(auth=f"allow_anonymous false\npassword_file {pw}\nacl_file {tmp_path / 'acl'}\n")
    b.start()
    return b


@pytest.mark.mosquitto
async def test_under_a_broker_acl_only_the_admin_account_can_change_the_streams(multi_acl_broker):
    b, users = multi_acl_broker, ACL_USERS

    def cfg(stream_id, user, **kw):
        return fast_config(b.url, stream_id, username=user, password=users[user], **kw)

    streams = FakeStreams(door=FakeService())
    async with serve_streams(streams, cfg("server", "omnizip"), admin_token=TOKEN) as server:
        async with MqttQueryClient(cfg("server", "alice", client_id="alice")) as alice:
            with pytest.raises(TimeoutError):  # the broker drops her request: she may not write there
                await control(alice, "omnizip", {"op": "add", "token": TOKEN,
                                                 "stream": {"id": "spy", "source": "camera"}}, timeout_s=1.0)
        async with MqttQueryClient(cfg("server", "admin", client_id="admin")) as admin_client:
            added = await control(admin_client, "omnizip", {"op": "add", "token": TOKEN,
                                                            "stream": {"id": "yard", "source": "camera"}})
        async with MqttQueryClient(cfg("yard", "alice", client_id="alice")) as alice:
            answer = await alice.ask("what is in the yard?", timeout_s=10)
        async with aiomqtt_client(b.port, "alice", users["alice"]) as reader:
            await reader.subscribe("omnizip/server/streams/list", qos=1)
            async with asyncio.timeout(10):
                listed = json.loads((await anext(aiter(reader.messages))).payload)
    assert added["ok"] is True and streams.ids() == ["door", "yard"] and server.errors["unauthorized"] == 0
    assert answer["answer"] == "answer: what is in the yard?"
    assert [s["id"] for s in listed["streams"]] == ["door", "yard"]


def aiomqtt_client(port, user, password):
    import aiomqtt

    return aiomqtt.Client("127.0.0.1", port, username=user, password=password, identifier=f"{user}-reader")


async def test_the_admin_script_lists_adds_and_removes_streams(broker, prefix, capsys, monkeypatch):
    import importlib.util

    from mqtt_helpers import script_protocol_flags

    spec = importlib.util.spec_from_file_location("mqtt_streams", ADMIN_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    async def run(*args, token=TOKEN):
        monkeypatch.setenv("OMNIZIP_ADMIN_TOKEN", token)
        argv = ["--broker", broker.url, "--topic-prefix", prefix, "--timeout", "20",
                *script_protocol_flags(broker.url), *args]
        code = await asyncio.to_thread(script.main, argv)  # the script runs its own event loop
        out, err = capsys.readouterr()
        return code, out, err

    streams = FakeStreams(door=FakeService())
    async with serve_streams(streams, fast_config(broker.url, "server", topic_prefix=prefix), admin_token=TOKEN):
        added = await run("add", "yard", "rtsp://u:pw@cam/yard", "rho_video=0.7", "loop=true")
        listed = await run("list")
        removed = await run("remove", "yard")
        wrong = await run("list", token="guess")
        usage = await run("add", "yard")
    assert added[0] == 0 and "yard\trunning\trtsp://***@cam/yard" in added[1], added
    assert streams.added == [{"id": "yard", "source": "rtsp://u:pw@cam/yard", "rho_video": 0.7, "loop": True}]
    assert listed[0] == 0 and listed[1].splitlines() == ["door\trunning\tsynthetic:door",
                                                         "yard\trunning\trtsp://***@cam/yard"]
    assert removed[0] == 0 and removed[1].splitlines() == ["door\trunning\tsynthetic:door"]
    assert wrong[0] == 1 and "unauthorized" in wrong[2]
    assert usage[0] == 2 and "add needs a stream id and a source" in usage[2]
    assert all(TOKEN not in out + err for _, out, err in (added, listed, removed, wrong, usage))
