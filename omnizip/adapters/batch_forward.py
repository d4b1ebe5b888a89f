"""Prefilling the tokens of several streams, each into its own KV cache, in one text-model call.

:func:`forward_many` is the entry point the stream server uses. The reference (``batched=False``) calls
``adapter.forward`` once per item; a batched path must leave every item's cache and logits as the
reference does (fp32: within 1e-5). Caches have different lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ForwardItem:
    """One stream's chunk to append (the arguments of ``adapter.forward``).

    Attributes:
        embeds: ``[S, D]`` input embeddings.
        positions: ``[3, S]`` TMRoPE position ids.
        cache: the stream's own KV cache (extended in place).
        extras: family extras (Qwen3 deepstack) or None.
        logits: whether to return the last position's logits.
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    cache: Any
    extras: dict[str, Any] | None = None
    logits: bool = True


def forward_many(adapter: Any, items: Sequence[ForwardItem], *, batched: bool = True) -> list[torch.Tensor | None]:
    """Append every item to its own cache; ``result[i]`` is item i's last logits ``[V]`` (or None).

    Args:
        adapter: a loaded adapter.
        items: chunks of different streams (every ``cache`` distinct).
        batched: False forces the one-at-a-time reference.
    """
    return [adapter.forward(it.embeds, it.positions, it.cache, extras=it.extras, logits=it.logits) for it in items]
