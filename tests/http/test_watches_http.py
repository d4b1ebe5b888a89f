"""Standing questions over HTTP: /v1/streams/{id}/watches (list, add, remove) and /v1/streams/{id}/alerts?since=."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
from http_helpers import replay_spec, served, wait_windows
from test_api import assert_error

from omnizip_stream.watch.spec import WatchSpec

pytestmark = pytest.mark.timeout(180)


def test_watches_and_alerts_over_http(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIZIP_ALERTS_DIR", str(tmp_path))
    spec = replay_spec("door", seed=1, seconds=4.0)
    spec = dataclasses.replace(spec, config=spec.config.replace(max_question_tokens=96),
                               watches=(WatchSpec("Is a dog barking?", id="dog", threshold=0.0),))
    with served(spec) as api:
        url = api.url
        api.call(lambda server: wait_windows(server, "door", 2))
        api.call(lambda server: server.session("door").drain())
        alerts = httpx.get(f"{url}/v1/streams/door/alerts", timeout=30).json()
        assert [a["window"] for a in alerts["data"]] == [0, 1] and alerts["last_seq"] == 2
        assert alerts["data"][0]["stream_id"] == "door" and alerts["data"][0]["question"] == "Is a dog barking?"
        later = httpx.get(f"{url}/v1/streams/door/alerts", params={"since": 1}, timeout=30).json()
        assert [a["seq"] for a in later["data"]] == [2]

        added = httpx.post(f"{url}/v1/streams/door/watches", json={"question": "Is it dark?", "debounce": 2},
                           timeout=30)
        assert added.status_code == 201 and added.json()["id"] == "w1" and added.json()["debounce"] == 2
        listed = httpx.get(f"{url}/v1/streams/door/watches", timeout=30).json()["data"]
        assert [w["id"] for w in listed] == ["dog", "w1"] and listed[0]["alerts"] == 2
        assert_error(httpx.post(f"{url}/v1/streams/door/watches", json={"question": "x?", "threshold": 3},
                                timeout=30), 400, "bad_request")
        assert_error(httpx.post(f"{url}/v1/streams/door/watches", json={"question": "y?", "id": "dog"},
                                timeout=30), 409, "conflict")
        assert_error(httpx.post(f"{url}/v1/streams/nope/watches", json={"question": "y?"}, timeout=30),
                     404, "unknown_stream")
        assert httpx.delete(f"{url}/v1/streams/door/watches/w1", timeout=30).json()["deleted"] is True
        assert_error(httpx.delete(f"{url}/v1/streams/door/watches/w1", timeout=30), 404, "unknown_watch")
        assert httpx.get(f"{url}/v1/streams/door", timeout=30).status_code == 200  # the stream goes on


def test_alerts_arrive_on_the_streams_event_stream(tmp_path, monkeypatch):
    from test_streams import read_events

    monkeypatch.setenv("OMNIZIP_ALERTS_DIR", str(tmp_path))
    spec = dataclasses.replace(replay_spec("door", seed=1, seconds=8.0), realtime=True)  # windows at 2, 4, 6, 8 s
    spec = dataclasses.replace(spec, config=spec.config.replace(max_question_tokens=96),
                               watches=(WatchSpec("Is a dog barking?", id="dog", threshold=0.0),))
    with served(spec) as api, httpx.stream("GET", f"{api.url}/v1/streams/door/events", timeout=60) as response:
        events = read_events(response.iter_lines(), lambda event, data: event == "alert")
        alert = events[-1][1]
        assert events[0][0] == "status"
        assert alert["stream_id"] == "door" and alert["question"] == "Is a dog barking?" and alert["watch_id"] == "dog"
        assert 0.0 <= alert["probability"] <= 1.0 and len(alert["time_range_s"]) == 2
        logged = httpx.get(f"{api.url}/v1/streams/door/alerts", timeout=30).json()["data"]
        assert alert["seq"] in [a["seq"] for a in logged]  # the event is the logged alert
