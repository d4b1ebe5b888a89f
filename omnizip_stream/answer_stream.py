"""AnswerStream: an answer of a :class:`~omnizip_stream.session.StreamSession`, piece by piece."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from omnizip_stream.query.base import Answer

if TYPE_CHECKING:
    from omnizip_stream.session import StreamSession

_STOP = object()


class AnswerStream:
    """Async iterator of answer pieces (``str``); ``answer`` is the final :class:`Answer` once exhausted."""

    def __init__(self, session: StreamSession, question: str, max_new_tokens: int | None) -> None:
        self._session = session
        self._question = question
        self._max_new_tokens = max_new_tokens
        self._pieces: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Future[Answer] | None = None
        self.answer: Answer | None = None

    def __aiter__(self) -> AnswerStream:
        return self

    async def __anext__(self) -> str:
        if self._task is None:
            self._task = asyncio.ensure_future(
                self._session.ask(self._question, self._max_new_tokens, on_text=self._pieces.put_nowait))
            self._task.add_done_callback(lambda _t: self._pieces.put_nowait(_STOP))
        piece = await self._pieces.get()
        if piece is _STOP:
            self.answer = self._task.result()  # re-raises a QueryError
            raise StopAsyncIteration
        return str(piece)

    async def aclose(self) -> None:
        """Stop waiting for the answer (the model finishes it; the result is discarded)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
