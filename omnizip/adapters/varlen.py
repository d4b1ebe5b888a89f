"""Encoder attention over many chunks in a few calls: equal-length chunks batched.

The Qwen audio and vision towers attend inside chunks (audio windows, vision windows, whole frames)
given by ``cu_seqlens``. With ``sdpa`` or ``eager`` the stock attention layer loops over the chunks,
one attention call each: a 2-s window of a small frame is a dozen calls per layer, and a batch of
eight streams' windows a hundred, each too small to use the machine.

:func:`varlen_attention` selects, for the duration of one tower call, an attention function that
gathers all chunks of the same length into one batched call of the model's own implementation
(``sdpa`` / ``eager``): a frame grid has a few distinct chunk sizes (full vision windows and the
edge ones, whole frames, full audio chunks), so a call makes a few attention calls per layer
whatever the number of frames or streams. Each chunk still attends only to itself, with the same
kernel, so results equal the per-chunk loop (fp32: bit-identical on the CPU; tested).

transformers hands ``cu_seqlens`` to an attention function only when its registered name contains
``flash`` (:func:`transformers.utils.generic.is_flash_attention_requested`), hence the name
``omnizip_varlen_flash``; a tower already on a real flash-attention implementation is left as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

from omnizip.adapters.packed import module_eager_attention

ATTN_IMPLEMENTATION = "omnizip_varlen_flash"

_Group = tuple[int, int, "torch.Tensor | None"]  # chunk length, chunk count, their rows (None: every chunk, views)

# The implementation each active call stands in for (the model thread is the only caller of the towers).
_INNER: ContextVar[Any] = ContextVar("omnizip_varlen_inner", default=None)
# Per tower call: the chunk groups of each cu_seqlens tensor (the layers share two of them: windows, frames).
_GROUPS: ContextVar[dict[int, tuple[torch.Tensor, list[_Group]]] | None] = ContextVar("omnizip_varlen_groups",
                                                                                     default=None)


def _chunk_groups(cu: torch.Tensor, device: torch.device) -> list[_Group]:
    """:func:`_group_chunks` of ``cu``, computed once per tower call and ``cu`` tensor."""
    cache = _GROUPS.get()
    if cache is not None and (hit := cache.get(id(cu))) is not None and hit[0] is cu:
        return hit[1]
    groups = _group_chunks(cu, device)
    if cache is not None:
        cache[id(cu)] = (cu, groups)  # cu kept alive with its entry, so its id is not reused meanwhile
    return groups


def _group_chunks(cu: torch.Tensor, device: torch.device) -> list[_Group]:
    """The chunks of ``cu_seqlens`` grouped by length (one host read of ``cu``)."""
    by_length: dict[int, list[int]] = {}  # chunk length -> the chunks' starts
    for start, stop in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        by_length.setdefault(stop - start, []).append(start)
    if len(by_length) == 1:  # one length (e.g. whole frames): plain views, no gather
        groups: list[_Group] = [(length, len(firsts), None) for length, firsts in by_length.items()]
    else:
        groups = [(length, len(firsts),
                   (torch.tensor(firsts).unsqueeze(1) + torch.arange(length)).reshape(-1).to(device))
                  for length, firsts in by_length.items()]
    return groups


def _varlen_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, **kwargs: Any
) -> tuple[torch.Tensor, None]:
    """``query/key/value [1, H, S, Dh]`` chunked by ``cu_seq_lens_q`` -> ``[1, S, H, Dh]`` (equal lengths batched)."""
    inner = _INNER.get()
    if inner is None:
        raise RuntimeError(f"the {ATTN_IMPLEMENTATION!r} attention runs only inside varlen_attention()")
    cu = kwargs.pop("cu_seq_lens_q")
    for name in ("cu_seq_lens_k", "max_length_q", "max_length_k"):
        kwargs.pop(name, None)
    groups = _chunk_groups(cu, query.device)
    heads, seq, dim = query.shape[1], query.shape[2], query.shape[3]
    if groups[0][2] is None:
        ((length, n, _),) = groups

        def chunks(x: torch.Tensor) -> torch.Tensor:
            return x[0].reshape(heads, n, length, dim).transpose(0, 1)  # [n, H, L, Dh]

        out = inner(module, chunks(query), chunks(key), chunks(value), attention_mask, **kwargs)[0]  # [n, L, H, Dh]
        return out.reshape(1, seq, heads, dim), None
    result = query.new_empty(seq, heads, dim)
    for length, n, rows in groups:
        assert rows is not None

        def gathered(x: torch.Tensor, rows: torch.Tensor = rows, n: int = n, length: int = length) -> torch.Tensor:
            return x[0].index_select(1, rows).reshape(heads, n, length, dim).transpose(0, 1)  # [n, H, L, Dh]

        out = inner(module, gathered(query), gathered(key), gathered(value), attention_mask, **kwargs)[0]
        result.index_copy_(0, rows, out.reshape(n * length, heads, dim))
    return result.unsqueeze(0), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, _varlen_attention)


_register()


@contextmanager
def varlen_attention(config: Any) -> Iterator[None]:
    """Inside the block, the attention layers built on ``config`` (an encoder tower's) batch their chunks.

    A config on flash attention (which takes ``cu_seqlens`` natively) or an implementation other than
    ``sdpa``/``eager`` is not touched.
    """
    original = config._attn_implementation
    if original == "sdpa":
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        inner = ALL_ATTENTION_FUNCTIONS["sdpa"]
    elif original == "eager":
        inner = _eager
    else:  # flash attention takes cu_seqlens itself; anything else keeps the stock loop
        yield
        return
    token, groups = _INNER.set(inner), _GROUPS.set({})
    config._attn_implementation = ATTN_IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = original
        _GROUPS.reset(groups)
        _INNER.reset(token)


def _eager(module: Any, *args: Any, **kwargs: Any) -> Any:
    """The layer's model module's own ``eager_attention_forward`` (transformers' fallback for ``eager``)."""
    return module_eager_attention(module)(module, *args, **kwargs)
