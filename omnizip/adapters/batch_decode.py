"""Greedy decoding of several streams' answers together, one token of each per text-model call.

:func:`greedy_decode_many` is the entry point the stream server uses. The reference (``batched=False``)
runs :func:`~omnizip.adapters.generation.greedy_decode` job after job; a batched path must produce the
same tokens and leave every cache as the reference does (fp32).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from omnizip.adapters.batch_forward import ForwardItem, forward_many
from omnizip.adapters.generation import Generation, IncrementalDetokenizer, greedy_decode


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
    """Decode every job; ``result[i]`` is job i's :class:`Generation`, or the exception its ``on_text`` raised.

    Batched, each step takes the next token of every unfinished job and appends them all in one packed
    text-model call (:func:`~omnizip.adapters.batch_forward.forward_many`); a job leaves at its own stop
    token or ``max_new_tokens``. Each job gets the tokens, text pieces (in order) and cache that
    :func:`greedy_decode` gives it alone. A failure of a packed call ends every job in it with that error.
    """
    if not batched or len(jobs) < 2:
        return [_decode_one(adapter, job) for job in jobs]
    stop = adapter.eos_token_ids()
    runs = [_Run(job, IncrementalDetokenizer(adapter.tokenizer), job.first_logits) for job in jobs]
    active = [run for run in runs if not run.finish_if_empty()]
    while active:
        fed = [run for run in active if run.step(stop)]
        if not fed:
            break
        embeds = adapter.embed_ids([run.ids[-1] for run in fed])
        items = [
            ForwardItem(embeds[k: k + 1], _position(adapter, run), run.job.cache) for k, run in enumerate(fed)
        ]
        try:
            logits = forward_many(adapter, items)
        except Exception as exc:  # noqa: BLE001 - a failed call ends its jobs, as it ends a job alone
            for run in fed:
                run.result = exc
            break
        for run, out in zip(fed, logits, strict=True):
            if out is None:  # logits=True for every item
                raise RuntimeError("forward_many returned no logits")
            run.logits = out
        active = fed
    return [run.result if run.result is not None else Generation(run.ids, run.detok.text, False) for run in runs]


def _decode_one(adapter: Any, job: DecodeJob) -> Generation | BaseException:
    """The one-at-a-time reference: :func:`greedy_decode` for one job."""
    try:
        return greedy_decode(adapter, job.cache, job.first_logits, job.next_position,
                             max_new_tokens=job.max_new_tokens, on_text=job.on_text)
    except Exception as exc:  # noqa: BLE001 - one job's failure stays that job's
        return exc


def _position(adapter: Any, run: _Run) -> torch.Tensor:
    """``[3, 1]`` position of the job's newest token (``next_position`` + its index), as greedy_decode."""
    return torch.full((3, 1), run.job.next_position + len(run.ids) - 1, dtype=adapter.position_dtype)


@dataclass
class _Run:
    """One job while it decodes."""

    job: DecodeJob
    detok: IncrementalDetokenizer
    logits: torch.Tensor
    ids: list[int] = field(default_factory=list)
    result: Generation | BaseException | None = None

    def finish_if_empty(self) -> bool:
        """End a job that may generate nothing (``max_new_tokens`` <= 0) as greedy_decode does."""
        if self.job.max_new_tokens <= 0:
            self.result = Generation([], "", False)
            return True
        return False

    def step(self, stop: set[int]) -> bool:
        """Take the argmax token; True when it must go through the model for the next step."""
        token = int(torch.argmax(self.logits).item())
        if token in stop:
            self.result = Generation(self.ids, self.detok.text, True)
            return False
        self.ids.append(token)
        try:
            delta = self.detok.push(token)
            if delta and self.job.on_text is not None:
                self.job.on_text(delta)
        except Exception as exc:  # noqa: BLE001 - this job ends with its own error, the others go on
            self.result = exc
            return False
        if len(self.ids) == self.job.max_new_tokens:
            self.result = Generation(self.ids, self.detok.text, False)
            return False
        return True
