"""What a query transport (MQTT, the terminal, tests) needs from a running stream session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


class QueryError(Exception):
    """A query that could not be answered, with a machine-readable code.

    Codes: ``bad_request`` (malformed or invalid input), ``too_long`` (the question does not fit the
    context), ``busy`` (the query queue is full), ``rate_limited``, ``not_ready`` (no window of the stream has been
    ingested yet, after waiting ``StreamConfig.first_window_wait_s``, or the session is not running),
    ``shutting_down`` (the server stopped before answering), ``internal``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Answer:
    """An answer about the live stream.

    Attributes:
        text: the generated answer.
        ttft_ms: time from the question reaching the model thread's queue to the first token.
        total_ms: time from submission to the last token.
        window_range: ``(first_window_index, last_window_index)`` of the windows in the cache (the
            sink's first to the newest), or None when no window had been ingested yet. Windows
            evicted in between are not visible: see the ``sink_*`` / ``recent_*`` fields.
        time_range_s: ``(t0_s, t1_s)`` of stream time from the first to the last cached window
            (evicted middles included in the span), or None.
        tokens_generated: number of generated tokens.
        extra: further counters (queue wait, prompt tokens ...).
        sink_window_range / sink_time_range_s: the sink windows (kept forever), or None.
        recent_window_range / recent_time_range_s: the contiguous run of recent windows after the
            sink (what eviction has left), or None.
        windows_cached: windows visible to the answer (sink plus recent).
        windows_evicted: windows evicted from the cache so far (not visible).
    """

    text: str
    ttft_ms: float
    total_ms: float
    window_range: tuple[int, int] | None
    time_range_s: tuple[float, float] | None
    tokens_generated: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    sink_window_range: tuple[int, int] | None = None
    sink_time_range_s: tuple[float, float] | None = None
    recent_window_range: tuple[int, int] | None = None
    recent_time_range_s: tuple[float, float] | None = None
    windows_cached: int = 0
    windows_evicted: int = 0

    @property
    def has_gap(self) -> bool:
        """Whether windows between the sink and the recent span were evicted."""
        return (self.sink_window_range is not None and self.recent_window_range is not None
                and self.recent_window_range[0] > self.sink_window_range[1] + 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


class QueryService(Protocol):
    """The part of a stream session that answers questions (implemented by ``StreamSession``)."""

    async def ask(self, question: str, max_new_tokens: int = 64) -> Answer:
        """Answer ``question`` about what the stream has shown so far.

        Raises:
            QueryError: with code ``too_long``, ``busy``, ``bad_request`` or ``internal``.
        """
        ...

    def ask_stream(self, question: str, max_new_tokens: int = 64) -> AsyncIterator[str]:
        """Yield the answer piece by piece (``str`` text deltas) as it is generated.

        Implementations may expose the complete :class:`Answer` (latencies, window range) as the
        iterator's ``answer`` attribute once it is exhausted (``StreamSession`` does).
        """
        ...

    def stats(self) -> dict[str, Any]:
        """Live counters (windows ingested, KV tokens and bytes, retention, lag, drops ...)."""
        ...
