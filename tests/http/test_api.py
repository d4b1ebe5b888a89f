"""The HTTP API against a real uvicorn server over a real StreamServer (tiny model)."""

from __future__ import annotations

import json

import httpx
import pytest
from http_helpers import replay_spec, served, wait_windows
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def api():
    with served(replay_spec("door", seed=1), replay_spec("yard", seed=2)) as s:
        s.call(lambda server: wait_windows(server, "door", 2))
        s.call(lambda server: wait_windows(server, "yard", 1))
        yield s


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert "Traceback" not in body["error"]["message"]
    return body["error"]


def test_healthz_and_the_stream_list(api):
    health = httpx.get(f"{api.url}/healthz").json()
    assert health == {"status": "ok", "model": "tiny", "streams": 2, "running": health["running"]}
    data = httpx.get(f"{api.url}/v1/streams").json()["data"]
    assert [d["id"] for d in data] == ["door", "yard"]
    door = data[0]
    assert door["source"] == "synthetic:seed=1" and door["state"] in ("running", "ended")
    assert door["stats"]["windows_ingested"] >= 2 and door["stats"]["kv_tokens"] > 0
    one = httpx.get(f"{api.url}/v1/streams/yard").json()
    assert one["id"] == "yard" and "retention_video" in one["stats"]
