"""Packed text-model calls: the chunks of several streams in one sequence, each attending to its own cache.

One call of the text model runs the new tokens of several streams packed into a single sequence
``[1, sum S_i, D]``: embeddings, norms, projections, MLPs / MoE experts and ``lm_head`` run once for
all of them. Only attention is per stream:

* :class:`PackedCache` stands in for the cache during the call. The attention layer hands it the packed
  new keys/values ``[1, H_kv, sum S_i, Dh]``; it appends each stream's slice to that stream's own
  cache layer (the same ``update`` the one-at-a-time call makes, so every cache ends up as it would)
  and keeps the per-stream full keys/values for the attention function of that layer. No cache is
  copied or padded.
* :func:`_packed_attention`, registered in transformers' ``AttentionInterface`` and selected on the
  text config only for the duration of the call, runs the model's own attention implementation (sdpa,
  eager, ...) per stream: the stream's queries against its full keys, with the mask transformers builds
  for that stream alone (causal among the new tokens, the whole cache visible).

The text model's own mask building is skipped (transformers returns no mask for an attention
implementation it has no mask function for), so nothing depends on the packed length.
The model thread is the only caller of the text model; the active call lives in a ``ContextVar``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

ATTN_IMPLEMENTATION = "omnizip_packed"


class PackedCache:
    """The cache of one packed call: splits new keys/values by stream and appends them to each stream's cache.

    Args:
        caches: each stream's own cache (extended in place), in packing order.
        sizes: ``S_i``, the number of new tokens of each stream, in packing order.
    """

    def __init__(self, caches: Sequence[Any], sizes: Sequence[int]) -> None:
        self.caches = list(caches)
        self.bounds: list[tuple[int, int]] = []
        start = 0
        for n in sizes:
            self.bounds.append((start, start + n))
            start += n
        self._full: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``[1, H_kv, sum S_i, Dh]`` new keys/values, slice i to cache i; returns the packed inputs.

        The per-stream full keys/values (cache + new) wait for :meth:`take` in this layer's attention.
        """
        keys, values = [], []
        for cache, (a, b) in zip(self.caches, self.bounds, strict=True):
            k, v = cache.update(key_states[:, :, a:b], value_states[:, :, a:b], layer_idx, *args, **kwargs)
            keys.append(k)
            values.append(v)
        self._full[layer_idx] = (keys, values)
        return key_states, value_states

    def take(self, layer_idx: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-stream full keys and values ``[1, H_kv, L_i + S_i, Dh]`` of ``layer_idx`` (once)."""
        try:
            return self._full.pop(layer_idx)
        except KeyError:
            raise RuntimeError(f"packed attention of layer {layer_idx} ran before its cache update") from None


class _PackedCall:
    """What the attention function needs during one packed call."""

    def __init__(self, cache: PackedCache, masks: list[Any], inner: Any) -> None:
        self.cache = cache
        self.masks = masks
        self.inner = inner

    def attend(self, module: Any, query: torch.Tensor, kwargs: dict[str, Any]) -> tuple[torch.Tensor, None]:
        """``query [1, H, sum S_i, Dh]`` -> output ``[1, sum S_i, H, Dh]``, stream by stream."""
        keys, values = self.cache.take(module.layer_idx)
        inner = self.inner if self.inner is not None else module_eager_attention(module)
        outs = []
        for (a, b), k, v, mask in zip(self.cache.bounds, keys, values, self.masks, strict=True):
            out, _ = inner(module, query[:, :, a:b], k, v, mask, **kwargs)
            outs.append(out)
        return torch.cat(outs, dim=1), None


_ACTIVE: ContextVar[_PackedCall | None] = ContextVar("omnizip_packed_call", default=None)


def _packed_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, **kwargs: Any
) -> tuple[torch.Tensor, None]:
    """The attention function registered as ``omnizip_packed`` (the packed ``key``/``value`` are unused)."""
    call = _ACTIVE.get()
    if call is None:
        raise RuntimeError(f"the {ATTN_IMPLEMENTATION!r} attention runs only inside packed_call()")
    return call.attend(module, query, kwargs)


def module_eager_attention(module: Any) -> Any:
    """The model's own ``eager_attention_forward`` (what transformers falls back to for ``eager``)."""
    return sys.modules[type(module).__module__].eager_attention_forward


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, _packed_attention)


_register()


def supports_packing(lm: Any) -> bool:
    """Whether packed calls reproduce ``lm``'s one-at-a-time calls: every layer a full-attention layer."""
    layer_types = getattr(lm.config, "layer_types", None) or ["full_attention"]
    return all(t == "full_attention" for t in layer_types)


@contextmanager
def packed_call(lm: Any, embeds: Sequence[torch.Tensor], caches: Sequence[Any]) -> Iterator[PackedCache]:
    """Run ``lm`` once on the packed chunks of several streams, each attending to its own cache.

    Inside the block, call ``lm`` with the chunks concatenated in this order (``[1, sum S_i, D]``) and
    the yielded :class:`PackedCache` as its cache.

    Args:
        lm: the text model (transformers ``...TextModel``).
        embeds: each stream's new embeddings ``[S_i, D]`` (only shapes, dtype and device are read).
        caches: each stream's own cache, all distinct.
    """
    from transformers.masking_utils import create_causal_mask

    if not supports_packing(lm):
        raise ValueError("packed calls need a text model whose layers are all full-attention layers")
    cfg = lm.config
    original = cfg._attn_implementation
    if original == ATTN_IMPLEMENTATION:
        raise RuntimeError("packed_call() does not nest")
    # Each stream's mask exactly as its own call builds it (before any cache grows).
    masks = [create_causal_mask(config=cfg, inputs_embeds=e.unsqueeze(0), attention_mask=None, cache=c)
             for e, c in zip(embeds, caches, strict=True)]
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    inner = None if original == "eager" else ALL_ATTENTION_FUNCTIONS[original]
    cache = PackedCache(caches, [int(e.shape[0]) for e in embeds])
    token = _ACTIVE.set(_PackedCall(cache, masks, inner))
    cfg._attn_implementation = ATTN_IMPLEMENTATION
    try:
        yield cache
    finally:
        cfg._attn_implementation = original
        _ACTIVE.reset(token)
