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

from omnizip.adapters.packed import packed_call, supports_packing


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

    Batched, the items' chunks are packed into one text-model call (``[1, sum S_i, D]``; attention per
    item against its own cache, see :mod:`omnizip.adapters.packed`). Adapters without
    ``forward_rows``/``pack_extras`` (or text models with sliding-window layers) run one at a time.

    Args:
        adapter: a loaded adapter.
        items: chunks of different streams (every ``cache`` distinct, every chunk non-empty).
        batched: False forces the one-at-a-time reference.

    Raises:
        ValueError: two items share a cache, or a chunk is empty.
    """
    if len({id(it.cache) for it in items}) != len(items):
        raise ValueError("forward_many needs a distinct cache per item")
    if any(it.embeds.shape[0] == 0 for it in items):
        raise ValueError("forward_many got an empty chunk")
    if not batched or len(items) < 2 or not _packable(adapter):
        return [adapter.forward(it.embeds, it.positions, it.cache, extras=it.extras, logits=it.logits)
                for it in items]
    sizes = [int(it.embeds.shape[0]) for it in items]
    ends = torch.cumsum(torch.tensor(sizes), 0) - 1
    rows = [int(ends[i]) for i, it in enumerate(items) if it.logits]
    embeds = torch.cat([it.embeds.to(adapter.device, adapter.dtype) for it in items])
    positions = torch.cat([it.positions.to(adapter.device) for it in items], dim=1)
    extras = adapter.pack_extras([(n, it.extras) for n, it in zip(sizes, items, strict=True)])
    lm = adapter.thinker.model.language_model
    with packed_call(lm, embeds.split(sizes), [it.cache for it in items]) as cache:
        logits = iter(adapter.forward_rows(embeds, positions, cache, extras=extras, rows=rows))
    return [next(logits) if it.logits else None for it in items]


def _packable(adapter: Any) -> bool:
    """Whether the adapter can run packed calls (a thinker adapter whose text model supports them)."""
    if not (hasattr(adapter, "forward_rows") and hasattr(adapter, "pack_extras") and hasattr(adapter, "thinker")):
        return False
    return supports_packing(adapter.thinker.model.language_model)
