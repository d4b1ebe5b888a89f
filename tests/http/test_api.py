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
    listing = httpx.get(f"{api.url}/v1/streams").json()
    data = listing["data"]
    memory = listing["memory"]  # the shared KV budget (none configured here: unbounded, reservations listed)
    assert memory["budget_mb"] is None and set(memory["streams"]) == {"door", "yard"}
    assert memory["reserved_mb"] == sum(memory["streams"].values()) > 0
    assert [d["id"] for d in data] == ["door", "yard"]
    door = data[0]
    assert door["source"] == "synthetic:seed=1" and door["state"] in ("running", "ended")
    assert door["stats"]["windows_ingested"] >= 2 and door["stats"]["kv_tokens"] > 0
    one = httpx.get(f"{api.url}/v1/streams/yard").json()
    assert one["id"] == "yard" and "retention_video" in one["stats"]


def test_chat_completion_answers_about_the_named_stream_with_usage(api):
    body = {"model": "door", "max_tokens": 4,
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "old"},
                         {"role": "assistant", "content": "x"}, {"role": "user", "content": "what happened?"}]}
    out = httpx.post(f"{api.url}/v1/chat/completions", json=body, timeout=60).json()
    assert out["object"] == "chat.completion" and out["model"] == "door"
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    usage = out["usage"]
    assert 0 < usage["completion_tokens"] <= 4
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    door = api.call(lambda server: _stats(server, "door"))
    assert usage["windows_cached"] == door["windows_ingested"] >= 2  # nothing evicted in 4 s
    assert usage["audio_tokens"] > 0 and usage["video_tokens"] > 0
    visible = api.call(lambda server: _visible(server, "door"))
    assert (usage["audio_tokens"], usage["video_tokens"]) == visible
    # the A/V tokens the answer saw are the cache's, not the question's
    assert usage["audio_tokens"] + usage["video_tokens"] < door["kv_tokens"]
    assert out["omnizip"]["stream_id"] == "door" and out["omnizip"]["time_range_s"][1] >= 4.0


async def _stats(server, stream_id):
    return server.session(stream_id).stats()


async def _visible(server, stream_id):
    """Audio/video tokens in the stream's cache windows, counted here from the cache's segments."""
    cache = server.session(stream_id).engine.cache
    audio = sum(int((s.modality == 1).sum()) for s in cache.windows())
    video = sum(int((s.modality == 2).sum()) for s in cache.windows())
    return audio, video


def test_the_official_openai_client_streams_token_by_token(api):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused-on-loopback", max_retries=0, timeout=60)
    stream = client.chat.completions.create(model="yard", messages=[{"role": "user", "content": "what is there?"}],
                                            stream=True, stream_options={"include_usage": True}, max_tokens=5)
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 2  # token by token, not one block
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and 0 < usage.completion_tokens <= 5 and usage.prompt_tokens > 0
    # the same question without streaming: the same (greedy) answer
    whole = client.chat.completions.create(model="yard", messages=[{"role": "user", "content": "what is there?"}],
                                           max_tokens=5)
    assert whole.choices[0].message.content == "".join(deltas).strip()
    # the server's model name with a stream_id field
    named = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "what is there?"}],
                                           max_tokens=5, extra_body={"stream_id": "yard"})
    assert named.choices[0].message.content == whole.choices[0].message.content
    models = [m.id for m in client.models.list()]
    assert models == ["door", "yard", "tiny"]
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "unknown_stream" and "served: door, yard" in err.value.message


def test_raw_sse_chunks_end_with_done(api):
    body = {"model": "door", "stream": True, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", f"{api.url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["omnizip"]["window_range"][0] == 0


BAD_CHATS = [
    ("malformed JSON", b'{"model": "door", "messages": [', 400, "bad_request"),
    ("not an object", b'[1, 2]', 400, "bad_request"),
    ("no model", b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "bad_request"),
    ("unknown stream", b'{"model": "ghost", "messages": [{"role": "user", "content": "hi"}]}', 404, "unknown_stream"),
    ("server model without stream_id", b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}',
     400, "bad_request"),
    ("no user message", b'{"model": "door", "messages": [{"role": "system", "content": "hi"}]}', 400, "bad_request"),
    ("empty question", b'{"model": "door", "messages": [{"role": "user", "content": "  "}]}', 400, "bad_request"),
    ("an image part", b'{"model": "door", "messages": [{"role": "user", "content": [{"type": "image_url",'
                      b' "image_url": {"url": "x"}}]}]}', 400, "bad_request"),
    ("bad max_tokens", b'{"model": "door", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}',
     400, "bad_request"),
    ("NaN", b'{"model": "door", "max_tokens": NaN, "messages": []}', 400, "bad_request"),
    ("invalid UTF-8", b'{"model": "door\xff"}', 400, "bad_request"),
    ("question too long", json.dumps({"model": "door", "messages": [{"role": "user", "content": "x" * 9000}]}).encode(),
     400, "too_long"),
]


@pytest.mark.parametrize(("why", "payload", "status", "code"), BAD_CHATS, ids=[b[0] for b in BAD_CHATS])
def test_bad_chat_requests_get_json_errors_and_the_server_keeps_serving(api, why, payload, status, code):
    response = httpx.post(f"{api.url}/v1/chat/completions", content=payload,
                          headers={"content-type": "application/json"}, timeout=30)
    assert_error(response, status, code)
    assert httpx.get(f"{api.url}/healthz").status_code == 200


def test_other_bad_requests_get_json_errors(api):
    url = api.url
    assert_error(httpx.post(f"{url}/v1/chat/completions", content=b"{}", headers={"content-type": "text/plain"}),
                 415, "bad_request")  # a cross-site form cannot post here
    assert_error(httpx.get(f"{url}/nowhere"), 404, "not_found")
    assert_error(httpx.put(f"{url}/v1/streams"), 405, "method_not_allowed")
    assert_error(httpx.get(f"{url}/v1/streams/ghost"), 404, "unknown_stream")
    assert_error(httpx.get(f"{url}/v1/streams/ghost/events"), 404, "unknown_stream")
    assert_error(httpx.delete(f"{url}/v1/streams/ghost"), 404, "unknown_stream")
    big = b'{"model": "door", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    assert_error(httpx.post(f"{url}/v1/chat/completions", content=big, headers={"content-type": "application/json"}),
                 413, "too_long")

    def chunks():  # no Content-Length: the limit is counted while the body arrives
        yield b'{"model": "door", "pad": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    assert_error(httpx.post(f"{url}/v1/streams", content=chunks(), headers={"content-type": "application/json"}),
                 413, "too_long")
    assert httpx.get(f"{url}/v1/streams").status_code == 200


def test_metrics_parse_with_prometheus_parser(api):
    httpx.post(f"{api.url}/v1/chat/completions", timeout=60,
               json={"model": "door", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    text = httpx.get(f"{api.url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("omnizip_windows_ingested", "omnizip_video_frames_dropped", "omnizip_retention_ratio",
                 "omnizip_kv_tokens", "omnizip_kv_bytes", "omnizip_window_lag_seconds", "omnizip_ttft_seconds",
                 "omnizip_stream_state", "omnizip_source_video_frames_dropped"):
        assert name in families, name
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("omnizip_windows_ingested_total", (("stream", "door"),))] >= 2
    assert 0 < samples[("omnizip_retention_ratio", (("modality", "audio"), ("stream", "door")))] <= 1
    assert 0 < samples[("omnizip_retention_ratio", (("modality", "video"), ("stream", "yard")))] <= 1
    assert samples[("omnizip_kv_bytes", (("stream", "door"),))] > 0
    assert samples[("omnizip_ttft_seconds_count", (("stream", "door"),))] >= 1
    assert samples[("omnizip_streams", ())] == 2


def test_the_ttft_histogram_counts_every_answer_once_whoever_asked(api):
    def answers() -> float:
        families = text_string_to_metric_families(httpx.get(f"{api.url}/metrics").text)
        return sum(s.value for f in families for s in f.samples
                   if s.name == "omnizip_ttft_seconds_count" and s.labels == {"stream": "yard"})

    before = answers()
    api.call(lambda server: server.session("yard").ask("what now?", 2))  # in process, as MQTT asks
    assert answers() == before + 1
    httpx.post(f"{api.url}/v1/chat/completions", timeout=60,
               json={"model": "yard", "max_tokens": 2, "messages": [{"role": "user", "content": "and now?"}]})
    assert answers() == before + 2  # an HTTP answer once, not twice


def test_a_client_that_leaves_mid_answer_does_not_disturb_the_server(api):
    body = {"model": "door", "stream": True, "messages": [{"role": "user", "content": "long story please"}]}
    for _ in range(3):
        with httpx.stream("POST", f"{api.url}/v1/chat/completions", json=body, timeout=60) as response:
            next(response.iter_lines())  # the first chunk, then hang up
    out = httpx.post(f"{api.url}/v1/chat/completions", timeout=60, json={**body, "stream": False})
    assert out.status_code == 200 and out.json()["usage"]["completion_tokens"] > 0


def test_every_query_error_code_has_an_http_status():
    from omnizip_stream.http.app import STATUS_OF_CODE
    from omnizip_stream.query.schema import ERROR_CODES

    assert set(ERROR_CODES) <= set(STATUS_OF_CODE)
    assert {STATUS_OF_CODE[c] for c in ("busy", "rate_limited")} == {429}
    assert STATUS_OF_CODE["not_ready"] == 503 and STATUS_OF_CODE["unknown_stream"] == 404
