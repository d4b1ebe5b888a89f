"""Greedy decoding of several streams' answers together, one token of each per text-model call.

:func:`greedy_decode_many` is the entry point the stream server uses. The reference (``batched=False``)
runs :func:`~omnizip.adapters.generation.greedy_decode` job after job; a batched path must produce the
same tokens and leave every cache as the reference does (fp32).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from omnizip.adapters.generation import Generation, greedy_decode


@dataclass
class DecodeJob:
    """One answer to generate (the arguments of :func:`greedy_decode`).

    Attributes:
        cache: the stream's KV cache, holding its prompt (extended in place).
        first_logits: ``[V]`` logits of the prompt's last position.
        next_position: position id of the first generated token.
        max_new_tokens: upper bound on generated tokens.
        on_text: receives each new piece of text; if it raises, this job ends with that exception and
            the others go on.
    """

    cache: Any
    first_logits: torch.Tensor
    next_position: float
    max_new_tokens: int
    on_text: Callable[[str], None] | None = None


def greedy_decode_many(
    adapter: Any, jobs: Sequence[DecodeJob], *, batched: bool = True
) -> list[Generation | BaseException]:
    """Decode every job; ``result[i]`` is job i's :class:`Generation`, or the exception its ``on_text`` raised."""
    out: list[Generation | BaseException] = []
    for job in jobs:
        try:
            out.append(greedy_decode(adapter, job.cache, job.first_logits, job.next_position,
                                     max_new_tokens=job.max_new_tokens, on_text=job.on_text))
        except Exception as exc:  # noqa: BLE001 - one job's failure stays that job's
            out.append(exc)
    return out
