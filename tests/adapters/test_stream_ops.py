"""The stream facts behind the adapter (omnizip.adapters.stream_ops), for both tiny families.

What a rolling cache asks the model: how a window's positions move in time, and how its KV cache is
cut (length, bytes, drop, truncate, re-rotate).
"""

from __future__ import annotations

import pytest
import torch
from omni_helpers import synthetic_clip

from omnizip.adapters.base import AVCursor
from omnizip.types import Modality


@pytest.fixture(params=["adapter25", "adapter3"])
def adapter(request):
    return request.getfixturevalue(request.param)


def _window_at(adapter, t0_s: float, wav, frames):
    """The encoded 2-s window placed at stream time ``t0_s`` (cursor as the engine builds it)."""
    spec = adapter.spec
    cursor = AVCursor(7, int(round(t0_s * spec.audio_tokens_per_s)), int(round(t0_s / spec.second_per_grid)))
    return adapter.encode_av(wav, frames, cursor, saliency=None, stream=True)


def test_shifting_a_window_back_in_time_equals_placing_it_earlier(adapter):
    # The same window at t=4 s moved back by 2 s of ids lands exactly where it would be encoded at t=2 s:
    # audio moves on all three rows, video on the temporal row only.
    wav, frames = synthetic_clip(2.0, seed=3)
    late, early = _window_at(adapter, 4.0, wav, frames), _window_at(adapter, 2.0, wav, frames)
    modality = late.layout.modality
    assert {int(Modality.AUDIO), int(Modality.VIDEO)} <= set(modality.tolist())
    delta = 2.0 * adapter.spec.position_id_per_seconds
    moved = adapter.shift_positions(late.layout.positions, modality, delta)
    assert moved.dtype == late.layout.positions.dtype
    assert torch.equal(moved, early.layout.positions)
    assert torch.equal(adapter.temporal_ids(moved), early.layout.positions[0])
    d = adapter.position_shift(late.layout.positions, modality, delta)
    assert torch.equal(late.layout.positions - d, moved)
    video = modality == int(Modality.VIDEO)
    assert torch.all(d[1:, video] == 0) and torch.all(d[0] == delta)


def _prefill(adapter, embeds, positions):
    cache = adapter.new_cache()
    adapter.forward(embeds, positions, cache, logits=False)
    return cache


def _layer_keys(cache):
    return [layer.keys for layer in cache.layers]


def test_cache_length_bytes_truncate_and_drop(adapter):
    n = 20
    embeds = torch.randn(n, adapter.spec.hidden_size)
    positions = adapter.positions_1d([float(i) for i in range(n)])
    empty = adapter.new_cache()
    assert adapter.cache_length(empty) == 0 and adapter.cache_bytes(empty) == 0
    cache = _prefill(adapter, embeds, positions)
    assert adapter.cache_length(cache) == n
    assert adapter.cache_bytes(cache) == n * adapter.kv_bytes_per_token()
    before = [k.clone() for k in _layer_keys(cache)]

    adapter.cache_drop(cache, 5, 9)
    assert adapter.cache_length(cache) == n - 4
    for k_old, k_new in zip(before, _layer_keys(cache), strict=True):
        assert torch.equal(k_new, torch.cat([k_old[..., :5, :], k_old[..., 9:, :]], dim=-2))

    # Truncating a cache is the same as never having appended the rest: the next token sees the same.
    full = _prefill(adapter, embeds, positions)
    adapter.cache_truncate(full, 12)
    assert adapter.cache_length(full) == 12 and adapter.cache_bytes(full) == 12 * adapter.kv_bytes_per_token()
    short = _prefill(adapter, embeds[:12], positions[:, :12])
    probe, at = torch.randn(1, adapter.spec.hidden_size), adapter.positions_1d([12.0])
    assert torch.allclose(adapter.forward(probe, at, full), adapter.forward(probe, at, short), atol=1e-5)


def test_cache_rerotate_equals_a_prefill_at_the_moved_positions(adapter):
    # A uniform move of every row keeps relative positions, so every layer's keys after re-rotation
    # equal a prefill at the moved positions; the first `start` tokens stay as they were.
    n, start, move = 16, 6, 300.0
    embeds = torch.randn(n, adapter.spec.hidden_size)
    old = adapter.positions_1d([500.0 + i for i in range(n)])
    new = old - move
    cache, reference = _prefill(adapter, embeds, old), _prefill(adapter, embeds, new)
    kept = [k[..., :start, :].clone() for k in _layer_keys(cache)]
    adapter.cache_rerotate(cache, 0, (new - old)[:, :])
    for got, want in zip(_layer_keys(cache), _layer_keys(reference), strict=True):
        assert (got - want).abs().max().item() <= 1e-4
    partial = _prefill(adapter, embeds, old)
    adapter.cache_rerotate(partial, start, (new - old)[:, start:])
    assert adapter.cache_length(partial) == n
    for k_first, got in zip(kept, _layer_keys(partial), strict=True):
        assert torch.equal(got[..., :start, :], k_first)
    assert (_layer_keys(partial)[0][..., start:, :] - _layer_keys(reference)[0][..., start:, :]).abs().max() <= 1e-4
