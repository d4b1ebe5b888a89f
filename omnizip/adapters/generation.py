"""Greedy decoding on top of an adapter's cached ``forward``, with text streamed piece by piece."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Generation:
    """Result of :func:`greedy_decode`.

    Attributes:
        token_ids: generated ids, without the stop token.
        text: decoded text.
        stopped: True when a stop token ended the answer (False: ``max_new_tokens`` reached).
    """

    token_ids: list[int]
    text: str
    stopped: bool


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas (safe for multi-token characters)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> str:
        """Add one token; return the new text it completes (may be empty)."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        delta = text[len(self.text):] if text.startswith(self.text) else text
        self.text = text
        return delta


@torch.no_grad()
def greedy_decode(
    adapter: Any,
    cache: Any,
    first_logits: torch.Tensor,
    next_position: float,
    *,
    max_new_tokens: int,
    stop_ids: set[int] | None = None,
    on_text: Callable[[str], None] | None = None,
) -> Generation:
    """Greedy decoding: argmax of ``first_logits``, then one cached forward per token.

    Args:
        adapter: an :class:`~omnizip.adapters.base.OmniAdapter` whose ``cache`` already holds the prompt.
        cache: the KV cache (extended in place by the generated tokens).
        first_logits: ``[V]`` logits of the prompt's last position.
        next_position: position id of the first generated token (all three rows): the largest
            prompt position + 1, i.e. what the uncompressed model uses.
        max_new_tokens: upper bound on generated tokens.
        stop_ids: ids that end the answer (default: the adapter's eos ids).
        on_text: called with each new piece of text as soon as it is decoded.

    Returns:
        The :class:`Generation`.
    """
    stop = adapter.eos_token_ids() if stop_ids is None else stop_ids
    detok = IncrementalDetokenizer(adapter.tokenizer)
    logits = first_logits
    ids: list[int] = []
    for step in range(max_new_tokens):
        token = int(torch.argmax(logits).item())
        if token in stop:
            return Generation(ids, detok.text, True)
        ids.append(token)
        delta = detok.push(token)
        if delta and on_text is not None:
            on_text(delta)
        if step + 1 == max_new_tokens:
            break
        pos = torch.full((3, 1), next_position + step, dtype=adapter.position_dtype)
        logits = adapter.forward(adapter.embed_ids([token]), pos, cache)
    return Generation(ids, detok.text, False)

