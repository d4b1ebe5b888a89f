"""``POST /v1/chat/completions`` (OpenAI-compatible) and ``GET /v1/models``.

``model`` names the stream (``"door"``), or the server's model with a ``stream_id`` field; the last
``user`` message is the question (earlier messages are not used: the stream is the context); the
answer is greedy (``temperature``/``top_p`` are accepted and ignored); ``max_tokens`` (or
``max_completion_tokens``) caps it (the stream's ``max_new_tokens`` is the ceiling). ``stream: true``
answers with server-sent ``chat.completion.chunk`` events token by token, ending with
``data: [DONE]``; with ``stream_options.include_usage`` a last chunk carries the usage.

``usage``: ``prompt_tokens`` (the question's tokens), ``completion_tokens``, ``total_tokens``, and
``audio_tokens`` / ``video_tokens`` (the compressed A/V tokens in the cache the answer attended to),
``windows_cached``. The extra ``omnizip`` object names what the answer saw: ``time_range_s``,
``window_range``, ``ttft_ms``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from omnizip_stream.http.app import ApiError, read_json
from omnizip_stream.http.streams import SSE_HEADERS, sse, unknown_stream
from omnizip_stream.query.base import Answer, QueryError
from omnizip_stream.server.service import StreamServer
from omnizip_stream.session import StreamSession

router = APIRouter()
MAX_QUESTION_CHARS = 8192


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The served streams as OpenAI "models" (and the server's model, which takes a ``stream_id``)."""
    server: StreamServer = request.app.state.server
    names = [*server.ids(), server.config.defaults.model]
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "omnizip"}
                                       for n in names]}


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Any:
    """Answer the last user message about the named stream (OpenAI's chat completion format)."""
    server: StreamServer = request.app.state.server
    body = await read_json(request)
    stream_id, session, question, max_tokens = _parse(server, body)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": body["model"]}
    answer_stream = session.ask_stream(question, max_tokens)
    pieces = answer_stream.__aiter__()
    # Wait for the first piece before the response starts: refusals (busy, not_ready ...) get a status code.
    try:
        first: str | None = await pieces.__anext__()
    except StopAsyncIteration:
        first = None
    except QueryError as exc:
        raise ApiError.of(exc) from None
    if not body.get("stream"):
        parts = [first] if first is not None else []
        try:
            parts.extend([piece async for piece in pieces])
        except QueryError as exc:
            raise ApiError.of(exc) from None
        answer = answer_stream.answer
        assert answer is not None
        return {**meta, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                             "finish_reason": _finish_reason(answer, max_tokens, session)}],
                "usage": _usage(answer), "omnizip": _seen(answer, stream_id)}

    async def events() -> AsyncIterator[str]:
        chunk = {**meta, "object": "chat.completion.chunk"}
        try:
            yield sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "finish_reason": None}]})
            if first is not None:
                yield sse({**chunk, "choices": [{"index": 0, "delta": {"content": first}, "finish_reason": None}]})
                async for piece in pieces:
                    yield sse({**chunk, "choices": [{"index": 0, "delta": {"content": piece},
                                                     "finish_reason": None}]})
            answer = answer_stream.answer
            assert answer is not None
            yield sse({**chunk, "choices": [{"index": 0, "delta": {},
                                             "finish_reason": _finish_reason(answer, max_tokens, session)}],
                       "omnizip": _seen(answer, stream_id)})
            if include_usage:
                yield sse({**chunk, "choices": [], "usage": _usage(answer)})
        except QueryError as exc:  # after the response started: an error event, then the end
            yield sse({"error": {"code": exc.code, "message": exc.message}})
        except asyncio.CancelledError:  # the client went away: the model finishes, the result is dropped
            await answer_stream.aclose()
            raise
        yield sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


def _parse(server: StreamServer, body: Any) -> tuple[str, StreamSession, str, int | None]:
    """(stream id, its session, the question, max tokens) of a request body; ApiError otherwise."""
    if not isinstance(body, dict):
        raise ApiError("bad_request", "the body must be a JSON object with 'model' and 'messages'")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError("bad_request", "'model' must name a stream (or the server's model with 'stream_id')")
    stream_id = body.get("stream_id", model)
    if "stream_id" in body and model not in (server.config.defaults.model, stream_id):
        raise ApiError("bad_request", f"'model' {model!r} with 'stream_id' must be the server's model "
                                      f"{server.config.defaults.model!r}")
    if stream_id == server.config.defaults.model and stream_id not in server.ids():
        raise ApiError("bad_request", f"'model' {model!r} is the server's model: add 'stream_id' to name the "
                                      f"stream (served: {', '.join(server.ids()) or 'none'})")
    if not isinstance(stream_id, str) or stream_id not in server.ids():
        raise unknown_stream(server, stream_id)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("bad_request", "'messages' must be a non-empty list")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise ApiError("bad_request", "'messages' has no user message (the last one is the question)")
    question = _text(users[-1].get("content"))
    if not question.strip():
        raise ApiError("bad_request", "the last user message is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise ApiError("too_long", f"question has {len(question)} characters, limit {MAX_QUESTION_CHARS}")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                   or max_tokens < 1):
        raise ApiError("bad_request", "'max_tokens' must be a positive integer")
    if body.get("n", 1) != 1:
        raise ApiError("bad_request", "'n' must be 1 (one answer per question)")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise ApiError("bad_request", "'stream' must be true or false")
    return stream_id, server.session(stream_id), question, max_tokens


def _text(content: Any) -> str:
    """A message's text: a string, or the ``text`` parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError("bad_request", "only text content parts are accepted: the stream is the audio "
                                              "and video the answer sees")
            texts.append(part["text"])
        return "\n".join(texts)
    raise ApiError("bad_request", "a message's 'content' must be a string or a list of text parts")


def _finish_reason(answer: Answer, max_tokens: int | None, session: StreamSession) -> str:
    cap = min(max_tokens or session.config.max_new_tokens, session.config.max_new_tokens)
    return "length" if answer.tokens_generated >= cap else "stop"


def _usage(answer: Answer) -> dict[str, Any]:
    prompt = int(answer.extra.get("prompt_tokens", 0))
    usage = {"prompt_tokens": prompt, "completion_tokens": answer.tokens_generated,
             "total_tokens": prompt + answer.tokens_generated}
    for key in ("audio_tokens", "video_tokens"):  # the A/V tokens in the cache the answer attended to
        if key in answer.extra:
            usage[key] = int(answer.extra[key])
    return {**usage, "windows_cached": answer.windows_cached}


def _seen(answer: Answer, stream_id: str) -> dict[str, Any]:
    return {"stream_id": stream_id, "time_range_s": answer.time_range_s, "window_range": answer.window_range,
            "ttft_ms": round(answer.ttft_ms, 3), "total_ms": round(answer.total_ms, 3)}
