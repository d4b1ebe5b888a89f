"""forward_many: the chunks of several streams in one packed text-model call == one at a time (fp32, 1e-5)."""

from __future__ import annotations

import pytest
import torch
from batch_helpers import CallCounter, assert_caches_close, prefilled_caches
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omni_helpers import synthetic_clip

from omnizip import make_compressor
from omnizip.adapters.batch_forward import ForwardItem, forward_many
from omnizip.adapters.packed import ATTN_IMPLEMENTATION
from omnizip.qa import prepare_clip_prompt

FAMILIES = ["adapter25", "adapter3"]


@pytest.fixture(params=FAMILIES)
def adapter(request):
    return request.getfixturevalue(request.param)


def _random_chunk(adapter, n: int, first_position: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(n, adapter.spec.hidden_size, generator=gen)
    return embeds, adapter.positions_1d([first_position + i for i in range(n)])


def _run_both(adapter, cache_lengths, chunks, *, seed=0):
    """``chunks``: per item ``(embeds, positions, extras, logits)``. Returns (ref, got, ref caches, got caches, calls)."""
    ref_caches, _ = prefilled_caches(adapter, cache_lengths, seed=seed)
    got_caches, _ = prefilled_caches(adapter, cache_lengths, seed=seed)

    def items(caches):
        return [ForwardItem(e, p, c, extras=x, logits=lg) for (e, p, x, lg), c in zip(chunks, caches, strict=True)]

    ref = forward_many(adapter, items(ref_caches), batched=False)
    with CallCounter(adapter.thinker.model.language_model) as counter:
        got = forward_many(adapter, items(got_caches))
    return ref, got, ref_caches, got_caches, counter.calls


def _assert_same(ref, got, ref_caches, got_caches):
    for r, g in zip(ref, got, strict=True):
        assert (r is None) == (g is None)
        if r is not None:
            assert g.shape == r.shape and g.dtype == torch.float32
            assert (g - r).abs().max().item() <= 1e-5
    for g, r in zip(got_caches, ref_caches, strict=True):
        assert_caches_close(g, r)


def test_packed_forward_equals_one_at_a_time(adapter):
    # an empty cache, a single-token chunk, a chunk without logits, caches of different lengths
    lengths = [0, 7, 3, 20]
    sizes = [5, 1, 9, 3]
    chunks = []
    for i, (n, length) in enumerate(zip(sizes, lengths, strict=True)):
        embeds, positions = _random_chunk(adapter, n, length + 2, seed=10 + i)
        chunks.append((embeds, positions, None, i != 2))
    ref, got, ref_caches, got_caches, calls = _run_both(adapter, lengths, chunks)
    assert calls == 1, "the four chunks must go through the text model in one call"
    assert got[2] is None
    _assert_same(ref, got, ref_caches, got_caches)
    assert adapter.thinker.model.language_model.config._attn_implementation != ATTN_IMPLEMENTATION


def test_packed_clip_prompts_with_their_extras(adapter):
    """Real A/V prompts (Qwen3: deepstack extras on the video tokens) packed with a text chunk."""
    chunks = []
    for seed, seconds in ((1, 2.0), (2, 3.0)):
        wav, frames = synthetic_clip(seconds, seed=seed)
        prompt = prepare_clip_prompt(adapter, wav, frames, "What is happening?", make_compressor("omnizip"))
        assert (prompt.extras is not None) == (adapter.spec.family == "qwen3_omni")
        chunks.append((prompt.embeds, prompt.positions, prompt.extras, True))
    embeds, positions = _random_chunk(adapter, 4, 30, seed=3)
    chunks.insert(1, (embeds, positions, None, True))
    ref, got, ref_caches, got_caches, calls = _run_both(adapter, [0, 12, 5], chunks)
    assert calls == 1
    _assert_same(ref, got, ref_caches, got_caches)


def test_one_item_and_shared_caches(adapter3):
    (cache,), _ = prefilled_caches(adapter3, [4])
    embeds, positions = _random_chunk(adapter3, 3, 4, seed=0)
    (out,) = forward_many(adapter3, [ForwardItem(embeds, positions, cache)])
    assert out is not None and out.shape == (adapter3.text_config.vocab_size,)
    with pytest.raises(ValueError, match="distinct cache"):
        forward_many(adapter3, [ForwardItem(embeds, positions, cache), ForwardItem(embeds, positions, cache)])
    with pytest.raises(ValueError, match="empty chunk"):
        forward_many(adapter3, [ForwardItem(embeds[:0], positions[:, :0], cache)])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(st.integers(0, 16), st.integers(1, 8), st.booleans()), min_size=2, max_size=4),
    st.sampled_from(FAMILIES),
)
def test_random_chunk_sizes(request, shapes, family):
    adapter = request.getfixturevalue(family)
    lengths = [length for length, _, _ in shapes]
    chunks = []
    for i, (length, n, logits) in enumerate(shapes):
        embeds, positions = _random_chunk(adapter, n, length, seed=i)
        chunks.append((embeds, positions, None, logits))
    ref, got, ref_caches, got_caches, calls = _run_both(adapter, lengths, chunks, seed=len(shapes))
    assert calls == 1
    _assert_same(ref, got, ref_caches, got_caches)


def test_packed_forward_with_eager_attention(adapter25, monkeypatch):
    """The packed call runs the model's own attention implementation per stream (here eager, float masks)."""
    monkeypatch.setattr(adapter25.thinker.model.language_model.config, "_attn_implementation", "eager")
    chunks = [(*_random_chunk(adapter25, n, 9, seed=n), None, True) for n in (4, 1, 6)]
    ref, got, ref_caches, got_caches, calls = _run_both(adapter25, [0, 9, 2], chunks)
    assert calls == 1
    _assert_same(ref, got, ref_caches, got_caches)


def test_a_failing_packed_call_leaves_the_model_as_it_was(adapter3, monkeypatch):
    caches, _ = prefilled_caches(adapter3, [2, 3])
    chunks = [_random_chunk(adapter3, 2, 5, seed=i) for i in range(2)]

    def broken(*args, **kwargs):
        raise RuntimeError("cache full")

    monkeypatch.setattr(caches[1], "update", broken)
    with pytest.raises(RuntimeError, match="cache full"):
        forward_many(adapter3, [ForwardItem(e, p, c) for (e, p), c in zip(chunks, caches, strict=True)])
    lm = adapter3.thinker.model.language_model
    assert lm.config._attn_implementation == "sdpa"
    bad = {"video_mask": torch.ones(3, dtype=torch.bool), "deepstack": [torch.zeros(3, 64)] * 2}
    fresh, _ = prefilled_caches(adapter3, [0, 0])
    with pytest.raises(ValueError, match="video_mask"):
        forward_many(adapter3, [ForwardItem(e, p, c, extras=bad if i else None)
                                for i, ((e, p), c) in enumerate(zip(chunks, fresh, strict=True))])
    # the model still answers one stream at a time as before
    (cache,), _ = prefilled_caches(adapter3, [2])
    assert adapter3.forward(*chunks[0], cache) is not None
