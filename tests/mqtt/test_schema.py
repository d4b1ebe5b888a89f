"""Request validation, reply encoding, the rate limiter and the outbox (no broker needed)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnizip_stream.query.base import Answer
from omnizip_stream.query.outbox import Outbox, OutMessage
from omnizip_stream.query.ratelimit import RateLimiter
from omnizip_stream.query.routes import RoutePolicy
from omnizip_stream.query.schema import (
    RequestError,
    Route,
    client_key,
    decode_payload,
    encode,
    final_answer,
    json_safe,
    parse_request,
    payload_route,
)

LIMITS = {"max_question_chars": 50, "default_max_new_tokens": 8, "max_new_tokens_limit": 32}


def parse(obj):
    return parse_request(obj, routes=RoutePolicy(stream_id="s"), **LIMITS)


def test_valid_request_is_normalised():
    req = parse({"question": "  hi there ", "max_new_tokens": 5, "stream": True, "id": "x", "client_id": "d1",
                 "reply_to": "a/b"})
    assert (req.question, req.max_new_tokens, req.stream, req.request_id, req.client_id) == ("hi there", 5, True,
                                                                                             "x", "d1")
    assert parse({"question": "q"}).max_new_tokens == 8


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ([], "bad_request"), ("q", "bad_request"), (None, "bad_request"), ({}, "bad_request"),
        ({"question": ""}, "bad_request"), ({"question": ["a"]}, "bad_request"),
        ({"question": "x" * 51}, "too_long"), ({"question": "q", "max_new_tokens": 0}, "bad_request"),
        ({"question": "q", "max_new_tokens": -1}, "bad_request"), ({"question": "q", "id": True}, "bad_request"),
        ({"question": "q", "id": "x" * 129}, "bad_request"), ({"question": "q", "reply_to": ""}, "bad_request"),
        ({"question": "q", "reply_to": "$SYS/x"}, "bad_request"),
        ({"question": "q", "reply_to": "omnizip/s/query"}, "bad_request"),
        ({"question": "q", "reply_to": "a/#"}, "bad_request"), ({"question": "q", "extra": 1}, "bad_request"),
    ],
)
def test_invalid_requests(obj, code):
    with pytest.raises(RequestError) as err:
        parse(obj)
    assert err.value.code == code and err.value.message


def test_decode_payload_errors():
    for raw in (b"\xc3\x28", b"{", b'{"a": Infinity}', b"[" * 50_000):
        with pytest.raises(RequestError) as err:
            decode_payload(raw)
        assert err.value.code == "bad_request"
    assert decode_payload(b'{"a": 1}') == {"a": 1}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_request_error(raw):
    try:
        parse(decode_payload(raw))
    except RequestError as err:
        assert err.code in ("bad_request", "too_long")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=60),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["question", "max_new_tokens", "stream", "id", "reply_to", "client_id",
                                        "other"]), json_values, max_size=6))
def test_arbitrary_objects_are_accepted_only_when_valid(obj):
    try:
        req = parse(obj)
    except RequestError as err:
        assert err.code in ("bad_request", "too_long")
        return
    assert isinstance(req.question, str) and 0 < len(req.question) <= 50
    assert 1 <= req.max_new_tokens <= 32 and isinstance(req.stream, bool)
    reply_to, rid = payload_route(obj, RoutePolicy())
    assert rid == req.request_id


def test_client_key_prefers_declared_id():
    assert client_key("dev", Route("r/1")) == "id:dev"
    assert client_key(None, Route("r/1")) == "topic:r/1"
    assert client_key(None, None) is None


def test_final_answer_and_json_safety():
    ans = Answer("a", 1.23456, float("nan"), (1, 2), None, 4)
    reply = final_answer("s", 7, ans, 3.0)
    assert reply["ttft_ms"] == 1.235 and reply["total_ms"] is None and reply["window_range"] == [1, 2]
    json.loads(encode(reply))
    np = pytest.importorskip("numpy")
    safe = json_safe({"a": np.float32(1.5), "b": (1, 2), "c": float("inf"), 3: {np.int64(2)}})
    assert safe == {"a": 1.5, "b": [1, 2], "c": None, "3": [2]}
    assert json.loads(encode({"x": np.arange(3)})) == {"x": [0, 1, 2]}


def test_rate_limiter_token_bucket():
    now = [0.0]
    rl = RateLimiter(2.0, 3, clock=lambda: now[0], max_clients=2)
    assert [rl.allow("a") for _ in range(4)] == [True, True, True, False]
    assert math.isclose(rl.retry_after_s("a"), 0.5)
    now[0] = 0.5
    assert rl.allow("a") and not rl.allow("a")
    assert rl.allow("b")
    rl.allow("c")  # evicts the least recently seen ("a")
    assert len(rl) == 2 and rl.allow("a")
    assert all(RateLimiter(0, 1).allow("x") for _ in range(100))
    with pytest.raises(ValueError):
        RateLimiter(-1, 1)


@given(st.lists(st.floats(0, 10), min_size=1, max_size=60), st.floats(0.1, 5), st.integers(1, 5))
def test_rate_limiter_never_exceeds_burst_plus_rate(gaps, rate, burst):
    now = [0.0]
    rl = RateLimiter(rate, burst, clock=lambda: now[0])
    allowed = 0
    for gap in gaps:
        now[0] += gap
        allowed += rl.allow("k")
    assert allowed <= burst + rate * now[0] + 1e-6


async def test_outbox_order_requeue_and_overflow():
    box = Outbox(3)
    msgs = [OutMessage(f"t{i}", b"x", partial=(i == 1)) for i in range(4)]
    for m in msgs[:3]:
        box.put(m)
    first = box.popleft()
    box.requeue_front([first])
    assert [box.popleft().topic for _ in range(3)] == ["t0", "t1", "t2"]
    for m in msgs:
        box.put(m)  # 4 into 3: the partial t1 is dropped first
    assert box.dropped == 1 and [box.popleft().topic for _ in range(3)] == ["t0", "t2", "t3"]
    for m in (msgs[0], msgs[2], msgs[3], msgs[0]):
        box.put(m)  # no partial left: the oldest goes
    assert box.dropped == 2 and [m.topic for m in list(box._items)] == ["t2", "t3", "t0"]
