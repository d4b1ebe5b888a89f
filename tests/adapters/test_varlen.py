"""Encoder attention with equal-length chunks batched (``omnizip/adapters/varlen.py``) == the stock chunk loop.

Both tiny families, both towers, ``sdpa`` and ``eager``: the features must be bit-identical (fp32,
CPU) to the stock per-chunk loop, with frames of several sizes in one call (chunks of several lengths,
interleaved); and the chunks must really be batched (a few attention calls per layer, not one per chunk).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from omni_helpers import synthetic_clip

import omnizip.adapters.varlen as varlen
from omnizip.adapters.varlen import ATTN_IMPLEMENTATION, varlen_attention


@pytest.fixture(params=["adapter25", "adapter3"])
def adapter(request: Any) -> Any:
    return request.getfixturevalue(request.param)


def _video_inputs(adapter: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Three clips of different frame sizes back to back (one vision call, as a batch of streams)."""
    parts = [adapter.prepare_video(synthetic_clip(2.0, seed=s, size=size, audio=False)[1])
             for s, size in ((1, (112, 112)), (2, (84, 140)), (3, (112, 112)))]
    return torch.cat([p for p, _ in parts]), torch.cat([g for _, g in parts])


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_vision_tower_is_bit_identical_and_batches_the_chunks(adapter, implementation, monkeypatch):
    core = adapter.thinker.model
    config = core.visual.config
    pixels, grid = _video_inputs(adapter)
    monkeypatch.setattr(config, "_attn_implementation", implementation)
    with torch.no_grad():
        stock = core.get_video_features(pixels, grid).pooler_output
        with varlen_attention(config):
            assert config._attn_implementation == ATTN_IMPLEMENTATION
            batched = core.get_video_features(pixels, grid).pooler_output
    assert config._attn_implementation == implementation  # restored
    for a, b in zip(stock, batched, strict=True):
        assert torch.equal(a, b)


def test_the_chunks_are_batched(adapter25):
    core = adapter25.thinker.model
    pixels, grid = _video_inputs(adapter25)
    calls: list[tuple[int, int]] = []  # (chunks in the call's cu_seqlens, attention calls it made)
    original = varlen._varlen_attention

    def counting(module: Any, query: torch.Tensor, key: Any, value: Any, attention_mask: Any = None, **kw: Any) -> Any:
        made: list[int] = []
        inner = varlen._INNER.get()

        def spy(*args: Any, **kwargs: Any) -> Any:
            made.append(1)
            return inner(*args, **kwargs)

        token = varlen._INNER.set(spy)
        try:
            return original(module, query, key, value, attention_mask, **kw)
        finally:
            varlen._INNER.reset(token)
            calls.append((len(kw["cu_seq_lens_q"]) - 1, len(made)))

    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, counting)
    try:
        with torch.no_grad(), varlen_attention(core.visual.config):
            core.get_video_features(pixels, grid)
    finally:
        AttentionInterface.register(ATTN_IMPLEMENTATION, original)
    assert len(calls) == core.visual.config.depth  # every layer went through it
    for chunks, made in calls:
        assert chunks >= 6 and made <= 5, calls  # a few distinct chunk lengths, not one call per chunk


def test_audio_tower_is_bit_identical(adapter):
    core = adapter.thinker.model
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.standard_normal((2, 128, 700)).astype(np.float32))
    mask = torch.ones(2, 700, dtype=torch.long)
    mask[1, 450:] = 0  # a shorter request: a short last chunk
    with torch.no_grad():
        stock = core.get_audio_features(feats, feature_attention_mask=mask).last_hidden_state
        with varlen_attention(core.audio_tower.config):
            batched = core.get_audio_features(feats, feature_attention_mask=mask).last_hidden_state
    assert torch.equal(stock, batched)


def test_the_chunk_groups_are_made_once_per_tower_call(adapter25, monkeypatch):
    """Every audio layer attends over the same cu_seqlens: its chunk groups are computed once, then reused."""
    core = adapter25.thinker.model
    made: list[int] = []
    original = varlen._group_chunks

    def counting(cu: torch.Tensor, device: Any) -> Any:
        made.append(len(cu) - 1)
        return original(cu, device)

    monkeypatch.setattr(varlen, "_group_chunks", counting)
    for _ in range(2):  # a second tower call groups its chunks anew
        with torch.no_grad(), varlen_attention(core.audio_tower.config):
            core.get_audio_features(torch.zeros(1, 128, 700), feature_attention_mask=torch.ones(1, 700, dtype=torch.long))
    assert len(core.audio_tower.layers) >= 2 and made == [made[0]] * 2 and made[0] >= 2
    assert varlen._GROUPS.get() is None  # the cache lives for one call


def test_outside_the_block_and_other_implementations(adapter25):
    q = torch.zeros(1, 2, 4, 8)
    with pytest.raises(RuntimeError, match="only inside varlen_attention"):
        varlen._varlen_attention(None, q, q, q, None, cu_seq_lens_q=torch.tensor([0, 4]))
    config = adapter25.thinker.model.visual.config
    for name in ("flash_attention_2", "flex_attention"):
        original = config._attn_implementation
        config._attn_implementation = name  # set directly: nothing runs with it here
        try:
            with varlen_attention(config):
                assert config._attn_implementation == name  # left as it is
        finally:
            config._attn_implementation = original
    with pytest.raises(ValueError), varlen_attention(config):
        raise ValueError("a failing call")
    assert config._attn_implementation == "sdpa"
