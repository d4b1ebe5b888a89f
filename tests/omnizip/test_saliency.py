"""Stage A: chunked audio saliency against the naive full-matrix formula, and the pooling."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omnizip.saliency import _chunk_sizes, audio_saliency, pool_saliency


def naive(q: torch.Tensor, k: torch.Tensor, blocks: list[int]) -> torch.Tensor:
    """The spec's formula with the full H x Tb x Tb attention of every block."""
    out = []
    start = 0
    for length in blocks:
        qb = q[start : start + length].double().permute(1, 0, 2)
        kb = k[start : start + length].double().permute(1, 0, 2)
        attn = torch.softmax(qb @ kb.transpose(1, 2) / math.sqrt(q.shape[2]), dim=-1)  # [H, Tb, Tb]
        out.append(attn.sum(dim=(0, 1)) / (q.shape[1] * length))
        start += length
    return torch.cat(out).float()


@settings(max_examples=25, deadline=None)
@given(t=st.integers(1, 40), h=st.integers(1, 4), dh=st.sampled_from([2, 8]),
       budget=st.sampled_from([64, 700, 5000, 1 << 20]), seed=st.integers(0, 1000))
def test_chunked_global_equals_naive(t, h, dh, budget, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(t, h, dh, generator=g) * 2, torch.randn(t, h, dh, generator=g) * 2
    q0, k0 = q.clone(), k.clone()
    got = audio_saliency(q, k, variant="global", max_chunk_bytes=budget)
    assert got.dtype == torch.float32 and got.shape == (t,)
    assert torch.allclose(got, naive(q, k, [t]), atol=1e-6)
    assert torch.equal(q, q0) and torch.equal(k, k0)
    assert got.sum().item() == pytest.approx(1.0, abs=1e-5)


@settings(max_examples=20, deadline=None)
@given(blocks=st.lists(st.integers(1, 12), min_size=1, max_size=5), budget=st.sampled_from([64, 1 << 20]),
       seed=st.integers(0, 1000))
def test_chunked_block_equals_naive(blocks, budget, seed) -> None:
    t = sum(blocks)
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(t, 3, 4, generator=g), torch.randn(t, 3, 4, generator=g)
    got = audio_saliency(q, k, block_lengths=blocks, variant="block", max_chunk_bytes=budget)
    assert torch.allclose(got, naive(q, k, blocks), atol=1e-6)
    start = 0
    for length in blocks:  # each block's saliency sums to 1
        assert got[start : start + length].sum().item() == pytest.approx(1.0, abs=1e-5)
        start += length


def test_block_on_a_single_block_is_global() -> None:
    q, k = torch.randn(30, 2, 8), torch.randn(30, 2, 8)
    assert torch.allclose(audio_saliency(q, k, block_lengths=[30], variant="block"),
                          audio_saliency(q, k, variant="global"), atol=1e-7)
    assert torch.allclose(audio_saliency(q, k, variant="block"), audio_saliency(q, k), atol=1e-7)


def test_block_differs_from_global_on_several_blocks() -> None:
    q, k = torch.randn(40, 2, 8), torch.randn(40, 2, 8)
    assert not torch.allclose(audio_saliency(q, k, block_lengths=[20, 20], variant="block"), audio_saliency(q, k))


def test_bf16_inputs() -> None:
    q, k = torch.randn(25, 2, 8), torch.randn(25, 2, 8)
    got = audio_saliency(q.bfloat16(), k.bfloat16())
    assert got.dtype == torch.float32
    assert torch.allclose(got, naive(q.bfloat16().float(), k.bfloat16().float(), [25]), atol=1e-6)


def test_chunk_sizes_respect_the_byte_budget_at_300_s() -> None:
    t, h, dh, budget = 15000, 20, 64, 32 * 1024 * 1024
    hc, rc = _chunk_sizes(h, t, dh, budget)
    assert 1 <= hc <= h and 1 <= rc <= t
    working = hc * rc * t * 4 + hc * t * dh * 4 + hc * rc * dh * 4
    assert working <= budget
    assert hc * rc * t < h * t * t / 100  # far from the full H x T x T tensor
    # a per-window block fits in one chunk
    assert _chunk_sizes(20, 100, 64, budget) == (20, 100)


def test_pooling_drops_an_odd_last_position_per_stream() -> None:
    s = torch.tensor([1.0, 3.0, 5.0, 7.0, 100.0])
    assert pool_saliency(s).tolist() == [2.0, 6.0]
    # two streams of 3 and 4 positions: each drops its own odd tail
    s2 = torch.tensor([1.0, 3.0, 50.0, 2.0, 4.0, 6.0, 8.0])
    assert pool_saliency(s2, [3, 4]).tolist() == [2.0, 3.0, 7.0]
    # the reference pools the concatenation, pairing across the boundary
    assert pool_saliency(s2).tolist() == [2.0, 26.0, 5.0]
    assert pool_saliency(torch.zeros(1)).numel() == 0


def test_bad_arguments_raise() -> None:
    q = torch.randn(10, 2, 4)
    with pytest.raises(ValueError, match="sum to T"):
        audio_saliency(q, q, block_lengths=[3, 3], variant="block")
    with pytest.raises(ValueError, match="variant"):
        audio_saliency(q, q, variant="local")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[T, H, dh\]"):
        audio_saliency(q, q[:5])
    with pytest.raises(ValueError, match="sum to T"):
        pool_saliency(torch.zeros(5), [2, 2])
    assert audio_saliency(torch.zeros(0, 2, 4), torch.zeros(0, 2, 4)).numel() == 0
