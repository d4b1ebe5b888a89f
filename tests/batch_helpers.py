"""Helpers of the batched text-model tests: streams' caches of different lengths, and comparing caches."""

from __future__ import annotations

import torch


def prefilled_caches(adapter, lengths, *, seed: int = 0):
    """One cache per length, holding that many random embeddings at positions ``0..L-1``.

    Returns ``(caches, last_logits)``; a cache of length 0 is empty and its logits are None. Equal
    arguments give equal caches (build the reference's and the batched run's copies separately).
    """
    gen = torch.Generator().manual_seed(seed)
    d = adapter.spec.hidden_size
    caches, logits = [], []
    for n in lengths:
        cache = adapter.new_cache()
        out = None
        if n:
            out = adapter.forward(torch.randn(n, d, generator=gen), adapter.positions_1d(list(range(n))), cache)
        caches.append(cache)
        logits.append(out)
    return caches, logits


def cache_tensors(cache):
    """``[(keys, values)]`` of every initialized layer of a transformers cache."""
    return [(layer.keys, layer.values) for layer in cache.layers if getattr(layer, "is_initialized", False)]


def assert_caches_close(got, want, atol: float = 1e-5) -> None:
    """Same layers, same shapes, keys and values within ``atol``."""
    got_t, want_t = cache_tensors(got), cache_tensors(want)
    assert len(got_t) == len(want_t)
    for (gk, gv), (wk, wv) in zip(got_t, want_t, strict=True):
        assert gk.shape == wk.shape and gv.shape == wv.shape
        assert (gk - wk).abs().max().item() <= atol
        assert (gv - wv).abs().max().item() <= atol


class CallCounter:
    """Counts the calls of a module (a forward pre-hook); use as a context manager."""

    def __init__(self, module) -> None:
        self.module = module
        self.calls = 0

    def __enter__(self) -> CallCounter:
        self._handle = self.module.register_forward_pre_hook(self._hook)
        return self

    def _hook(self, module, args) -> None:
        self.calls += 1

    def __exit__(self, *exc) -> None:
        self._handle.remove()
