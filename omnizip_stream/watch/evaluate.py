"""Yes/no evaluation of a stream's standing questions: K questions, one forward, the cache untouched.

Every standing question of a stream is appended after the stream's cached prefix (the A/V closing
tokens, the question's user-turn tail with a fixed answer instruction, the assistant opening) and
its last position's logits are read. :func:`evaluate_yes_no` packs the K question chunks into ONE
text-model call with :func:`~omnizip.adapters.batch_forward.forward_many` (the packed machinery of
:mod:`omnizip.adapters.packed`): each chunk attends to the stream's cache plus itself only, at the
positions it would have alone. Each chunk gets a *view* of the stream's cache (a shallow copy whose
layers point at the same key/value tensors; ``DynamicLayer.update`` concatenates into a new tensor on
the view), so the stream's own cache object is never written: it is bit-identical afterwards.

``P(yes)`` is the two-way softmax of the summed probabilities of the first tokens of the tokenizer's
"yes" spellings against those of its "no" spellings at the first answer position.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from omnizip.adapters.batch_forward import ForwardItem, forward_many
from omnizip_stream.batch import Ask

ANSWER_INSTRUCTION = " Answer with yes or no."
"""Appended to every standing question (mode ``yes_no``)."""

_YES = ("Yes", "yes", " Yes", " yes", "YES")
_NO = ("No", "no", " No", " no", "NO")


@dataclass(frozen=True)
class YesNoTokens:
    """Token ids whose probabilities count as "yes" and as "no" (first tokens, deduplicated)."""

    yes: tuple[int, ...]
    no: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> YesNoTokens:
        """The first token of each spelling of yes / no (what the first answer position decides).

        A first token shared by a "yes" and a "no" spelling (a leading space on a byte-level
        tokenizer) decides nothing and is left out of both.

        Raises:
            ValueError: no distinct first token is left for "yes" or for "no".
        """
        def firsts(words: Sequence[str]) -> list[int]:
            out: list[int] = []
            for word in words:
                enc = list(tokenizer(word, add_special_tokens=False)["input_ids"])
                if enc and int(enc[0]) not in out:
                    out.append(int(enc[0]))
            return out

        yes, no = firsts(_YES), firsts(_NO)
        shared = set(yes) & set(no)
        yes, no = [i for i in yes if i not in shared], [i for i in no if i not in shared]
        if not yes or not no:
            raise ValueError("the tokenizer has no distinct first tokens for 'yes' and 'no'")
        return cls(tuple(yes), tuple(no))

    def probability(self, logits: torch.Tensor) -> float:
        """``P(yes) = p_yes / (p_yes + p_no)`` from last-position logits ``[V]``."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        lyes = torch.logsumexp(logp[list(self.yes)], dim=0)
        lno = torch.logsumexp(logp[list(self.no)], dim=0)
        return float(torch.sigmoid(lyes - lno))


def yes_no_text(question: str) -> str:
    """The user-turn text of a standing question: the question plus the fixed answer instruction."""
    return question.strip() + ANSWER_INSTRUCTION


def _chunk(engine: Any, text: str, ids_cache: dict[str, list[int]] | None) -> ForwardItem:
    """The engine's question chunk for ``text`` (``StreamEngine.begin_question``), on a view of the cache.

    With ``ids_cache``, the question's token ids (the chat template rendering, ~30 % of an evaluation
    on the tiny model) are computed once per question: only the positions, which follow the cache,
    are rebuilt here exactly as ``begin_question`` builds them.
    """
    if ids_cache is None or text not in ids_cache:
        item = engine.begin_question(Ask(text, 1)).item
        if ids_cache is not None:
            ids_cache[text] = engine.question_ids(text)
        return dataclasses.replace(item, cache=engine.adapter.cache_view(engine.cache.cache))
    adapter, suffix = engine.adapter, ids_cache[text]
    close_ids = adapter.close_ids(engine.has_audio, engine.has_video)
    close_pos = adapter.special_positions(len(close_ids), engine.cache.close_position())
    start = close_pos[-1] + 1
    positions = adapter.positions_1d(close_pos + [start + i for i in range(len(suffix))])
    return ForwardItem(adapter.embed_ids(close_ids + suffix), positions, adapter.cache_view(engine.cache.cache), logits=True)


def evaluate_yes_no(engine: Any, questions: Sequence[str], tokens: YesNoTokens, *,
                    batched: bool = True, ids_cache: dict[str, list[int]] | None = None) -> list[float]:
    """``P(yes)`` of each standing question over the stream's current cache, in one forward.

    Args:
        engine: a :class:`~omnizip_stream.engine.StreamEngine` with at least one window.
        questions: standing question texts (without the answer instruction).
        tokens: the yes/no token ids of the engine's tokenizer.
        batched: False runs the questions one at a time (the reference; same views, same numbers
            within fp32 rounding).
        ids_cache: token ids of questions already seen (kept by the caller across windows).

    Returns:
        One probability per question, in order. The engine's cache is not modified.
    """
    if not questions:
        return []
    items = [_chunk(engine, yes_no_text(question), ids_cache) for question in questions]
    logits = forward_many(engine.adapter, items, batched=batched)
    return [tokens.probability(row) for row in logits if row is not None]
