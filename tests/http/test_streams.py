"""Adding, watching and removing streams over HTTP (a real uvicorn server over a real StreamServer)."""

from __future__ import annotations

import json

import httpx
import pytest
from http_helpers import replay_spec, served
from test_api import assert_error

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def api():
    with served(replay_spec("door", seed=1)) as s:
        yield s


def read_events(lines, until):
    """Parse SSE ``event:``/``data:`` pairs from ``lines`` until ``until(event, data)`` is true."""
    events, event = [], None
    for line in lines:
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: "):])
            events.append((event, data))
            if until(event, data):
                return events
    return events


def test_a_stream_added_over_http_is_served_watched_and_removed(api):
    url = api.url
    spec = {"id": "yard", "source": "synthetic:seed=5", "realtime": False, "duration_s": 4.0, "max_side": 112,
            "rho_video": 0.5}
    added = httpx.post(f"{url}/v1/streams", json=spec, timeout=60)
    assert added.status_code == 201, added.text
    assert added.json()["id"] == "yard" and added.json()["state"] in ("starting", "running", "ended")
    assert [d["id"] for d in httpx.get(f"{url}/v1/streams").json()["data"]] == ["door", "yard"]
    with httpx.stream("GET", f"{url}/v1/streams/yard/events", timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        seen = read_events(lines, lambda e, d: d.get("state") == "ended")
        assert seen[0][0] == "status" and seen[-1][1]["state"] == "ended"
        assert seen[-1][1]["stats"]["windows_ingested"] == 2  # 4 s of 2-s windows
        answer = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "yard", "max_tokens": 3, "messages": [{"role": "user", "content": "and now?"}]})
        assert answer.status_code == 200 and answer.json()["omnizip"]["time_range_s"] == [0.0, 4.0]
        assert httpx.delete(f"{url}/v1/streams/yard").json() == {"id": "yard", "object": "stream", "deleted": True}
        rest = read_events(lines, lambda e, d: e == "removed")
        assert rest[-1] == ("removed", {"id": "yard"})
        assert [line for line in lines if line] == []  # the event stream ends
    assert_error(httpx.get(f"{url}/v1/streams/yard"), 404, "unknown_stream")
    assert_error(httpx.post(f"{url}/v1/chat/completions", json={
        "model": "yard", "messages": [{"role": "user", "content": "hi"}]}), 404, "unknown_stream")
    assert api.call(_ids) == ["door"]
    # the id is free again
    again = httpx.post(f"{url}/v1/streams", json={**spec, "duration_s": 2.0}, timeout=60)
    assert again.status_code == 201
    assert httpx.delete(f"{url}/v1/streams/yard").status_code == 200


async def _ids(server):
    return server.ids()


@pytest.mark.parametrize(("spec", "status", "code", "words"), [
    ({"id": "door", "source": "synthetic"}, 409, "conflict", "already being served"),
    ({"id": "bad id!", "source": "synthetic"}, 400, "bad_request", "stream id"),
    ({"id": "x1"}, 400, "bad_request", "missing key 'source'"),
    ({"id": "x2", "source": "synthetic", "colour": 3}, 400, "bad_request", "colour"),
    ({"id": "x3", "source": "synthetic", "model": "other"}, 400, "bad_request", "one model serves every stream"),
    ({"id": "x4", "source": "nope://what"}, 400, "bad_request", "source"),
    ({"id": "x5", "source": "synthetic", "rho_video": 7}, 400, "bad_request", "rho_video"),
    ("just a string", 400, "bad_request", "mapping"),
])
def test_bad_add_requests_are_refused_with_one_line(api, spec, status, code, words):
    error = assert_error(httpx.post(f"{api.url}/v1/streams", json=spec, timeout=30), status, code)
    assert words in error["message"] and "\n" not in error["message"]
    assert api.call(_ids) == ["door"]


def test_a_stream_whose_source_fails_is_reported_and_answers_not_ready(api, tmp_path):
    missing = tmp_path / "gone.mp4"
    spec = {"id": "ghost", "source": f"file:{missing}", "first_window_wait_s": 0.2}
    assert httpx.post(f"{api.url}/v1/streams", json=spec, timeout=30).status_code == 201
    try:
        with httpx.stream("GET", f"{api.url}/v1/streams/ghost/events", timeout=60) as response:
            seen = read_events(response.iter_lines(), lambda e, d: d.get("state") == "retrying")
        info = seen[-1][1]
        assert info["retries"] >= 1 and "gone.mp4" in info["last_error"]
        error = assert_error(httpx.post(f"{api.url}/v1/chat/completions", timeout=30, json={
            "model": "ghost", "messages": [{"role": "user", "content": "anything?"}]}), 503, "not_ready")
        assert "no window" in error["message"]
        # the other stream is untouched
        assert httpx.get(f"{api.url}/v1/streams/door").json()["last_error"] is None
    finally:
        httpx.delete(f"{api.url}/v1/streams/ghost")
