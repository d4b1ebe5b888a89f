"""Independent clients: Debian's mosquitto_rr / mosquitto_pub / mosquitto_sub, and scripts/mqtt_query.py."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from mqtt_helpers import FakeService, fast_config, need_binary, script_protocol_flags, serve

from omnizip_stream.query.broker import free_port

pytestmark = pytest.mark.broker

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mqtt_query.py"


async def run(*cmd: str, timeout_s: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.mqtt5
async def test_mosquitto_rr_v5_request_response(broker, stream_id, service):
    rr = need_binary("mosquitto_rr")
    cfg = fast_config(broker.url, stream_id)
    async with serve(service, cfg):
        code, out, err = await run(
            rr, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", cfg.query_topic,
            "-e", f"devices/{stream_id}/rr", "-D", "PUBLISH", "correlation-data", "abc123",
            "-m", json.dumps({"question": "what moved?", "max_new_tokens": 9}), "-W", "10",
        )
    assert code == 0, err
    reply = json.loads(out)
    assert reply["ok"] is True and reply["answer"] == "answer: what moved?"
    assert service.calls == [("what moved?", 9)]


@pytest.mark.mqtt5
async def test_mosquitto_rr_gets_error_reply_for_bad_json(broker, stream_id, service):
    rr = need_binary("mosquitto_rr")
    cfg = fast_config(broker.url, stream_id)
    async with serve(service, cfg):
        code, out, err = await run(rr, "-h", "127.0.0.1", "-p", str(broker.port), "-t", cfg.query_topic,
                                   "-e", f"devices/{stream_id}/rr", "-m", "{oops", "-W", "10")
    assert code == 0, err
    assert json.loads(out)["error"]["code"] == "bad_request"


@pytest.mark.mosquitto  # the reply waits in mosquitto for the offline persistent subscriber
async def test_mosquitto_pub_sub_v311_reply_to(broker, stream_id, service):
    pub, sub = need_binary("mosquitto_pub"), need_binary("mosquitto_sub")
    cfg = fast_config(broker.url, stream_id)
    reply_topic = f"devices/{stream_id}/answers"
    common = ["-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv311"]
    sub_id = f"sub-{stream_id}"
    # Create a persistent subscription first (-E exits once it is acknowledged): no race with the reply.
    code, _, err = await run(sub, *common, "-c", "-i", sub_id, "-q", "1", "-t", reply_topic, "-E")
    assert code == 0, err
    async with serve(service, cfg) as server:
        body = json.dumps({"question": "is the door open?", "reply_to": reply_topic, "id": "d-1"})
        code, _, err = await run(pub, *common, "-q", "1", "-t", cfg.query_topic, "-m", body)
        assert code == 0, err
        code, out, err = await run(sub, *common, "-c", "-i", sub_id, "-q", "1", "-t", reply_topic,
                                   "-C", "1", "-W", "10")
    assert code == 0, err
    reply = json.loads(out)
    assert reply["id"] == "d-1" and reply["answer"] == "answer: is the door open?"
    assert server.counters["answered"] == 1


@pytest.mark.parametrize("extra", [pytest.param([], marks=pytest.mark.mqtt5), ["--v311"]])
async def test_script_prints_answer(broker, stream_id, service, extra):
    async with serve(service, fast_config(broker.url, stream_id)):
        code, out, err = await run(sys.executable, str(SCRIPT), "--broker", broker.url, "--stream-id", stream_id,
                                   *extra, "--timeout", "20", "how many people?")
    assert code == 0, err
    assert out == "answer: how many people?\n"
    assert "windows 3-7" in err and "ttft 1.5 ms" in err


async def test_script_streams_partials(broker, stream_id, service):
    async with serve(service, fast_config(broker.url, stream_id)):
        code, out, err = await run(sys.executable, str(SCRIPT), "--broker", broker.url, "--stream-id", stream_id,
                                   *script_protocol_flags(broker.url), "--stream", "--json", "--timeout", "20",
                                   "describe the scene")
    assert code == 0, err
    reply = json.loads(out)
    assert reply["answer"] == "answer: describe the scene" and reply["partials"] == 4


async def test_script_reports_service_error_with_nonzero_exit(broker, stream_id):
    from omnizip_stream.query.base import QueryError

    service = FakeService(fail={"too much": QueryError("too_long", "question does not fit")})
    async with serve(service, fast_config(broker.url, stream_id)):
        code, out, err = await run(sys.executable, str(SCRIPT), "--broker", broker.url, "--stream-id", stream_id,
                                   *script_protocol_flags(broker.url), "--timeout", "20", "too much")
    assert code == 1
    assert err.strip() == "error [too_long]: question does not fit"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--broker", "http://127.0.0.1:1", "--stream-id", "cam1"], "scheme must be mqtt or mqtts"),
        (["--broker", "mqtt://127.0.0.1:1", "--stream-id", "cam/1"], "stream_id"),
        (["--broker", "mqtt://127.0.0.1:1", "--stream-id", "cam1", "--cafile", "/nonexistent.pem"], "mqtts://"),
    ],
)
async def test_script_user_mistakes_are_one_line_errors(args, message):
    code, out, err = await run(sys.executable, str(SCRIPT), *args, "question")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


async def test_script_unreachable_broker_is_one_line_error():
    code, _, err = await run(sys.executable, str(SCRIPT), "--broker", f"mqtt://127.0.0.1:{free_port()}",
                             "--stream-id", "cam1", "question")
    assert code == 2
    assert err.startswith("error: cannot connect to mqtt://127.0.0.1:") and len(err.strip().splitlines()) == 1


async def test_script_times_out_when_nobody_serves_the_stream(broker, stream_id):
    code, _, err = await run(sys.executable, str(SCRIPT), "--broker", broker.url, "--stream-id", stream_id,
                             *script_protocol_flags(broker.url), "--timeout", "0.5", "anyone?")
    assert code == 3
    assert "no reply from stream" in err
