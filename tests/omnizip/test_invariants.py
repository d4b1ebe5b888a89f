"""Every row of the case table through the same invariants (hypothesis over random layouts)."""

from __future__ import annotations

import pytest
import torch
from cases import CASES, Case, check_budget
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omnizip_synth import Spec, assert_layout_unchanged, clone_layout, make_layout, specs

from omnizip import Modality, apply_plan, available, gather_kept, make_compressor

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_case_table_covers_every_registered_method() -> None:
    assert {c.method for c in CASES} == set(available())
    assert {"offline", "streaming"} <= {c.config().mode for c in CASES if c.method == "omnizip"}


def test_streaming_flag_follows_the_mode() -> None:
    for case in CASES:
        comp = make_compressor(case.method, case.config())
        assert comp.name == case.method
        assert comp.streaming == (case.config().mode == "streaming")


def _check_plan_shape(layout, plan) -> None:
    n = layout.num_tokens
    assert plan.keep.dtype == torch.bool and plan.keep.shape == (n,)
    c = layout.num_chunks
    assert plan.chunk_video_ratio.shape == (c,) and plan.chunk_audio_retention.shape == (c,)
    # text and special tokens are never dropped
    assert bool(plan.keep[layout.modality == Modality.TEXT].all())
    # merges: kept audio anchors absorb dropped audio tokens, weights sum to 1 per anchor
    if plan.merge_dst.numel():
        assert bool(plan.keep[plan.merge_dst].all())
        assert not bool(plan.keep[plan.merge_src].any())
        assert bool((layout.modality[plan.merge_dst] == Modality.AUDIO).all())
        assert bool((layout.modality[plan.merge_src] == Modality.AUDIO).all())
        sums = torch.zeros(n).index_add_(0, plan.merge_dst, plan.merge_weight)
        assert torch.allclose(sums[torch.unique(plan.merge_dst)], torch.ones(1), atol=1e-5)
        assert int(torch.unique(plan.merge_src).numel()) == int(plan.merge_src.numel())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@SETTINGS
@given(spec=specs(), seed=st.integers(0, 2**16), bf16=st.booleans())
def test_invariants(case: Case, spec: Spec, seed: int, bf16: bool) -> None:
    dtype = torch.bfloat16 if bf16 else torch.float32
    layout = make_layout(spec, seed=seed, dtype=dtype)
    before = clone_layout(layout)
    config = case.config()
    plan = make_compressor(case.method, config).plan(layout)
    _check_plan_shape(layout, plan)
    check_budget(case, config, layout, plan)
    out = apply_plan(layout.embeds, plan)
    assert out.shape == layout.embeds.shape and out.dtype == dtype
    embeds, positions, kept_index = gather_kept(layout, plan)
    assert_layout_unchanged(layout, before)
    # kept tokens form an order-preserving subsequence, positions gathered alongside
    assert kept_index.dtype == torch.int64
    assert bool((kept_index[1:] > kept_index[:-1]).all())
    assert torch.equal(kept_index, torch.nonzero(plan.keep, as_tuple=True)[0])
    assert embeds.shape == (int(plan.keep.sum()), layout.embeds.shape[1]) and embeds.dtype == dtype
    assert torch.equal(embeds, out[kept_index])
    assert positions is not None and torch.equal(positions, layout.positions[:, kept_index])
    # rows that are not anchors are copied exactly
    untouched = torch.ones(layout.num_tokens, dtype=torch.bool)
    untouched[plan.merge_dst] = False
    assert torch.equal(out[untouched], layout.embeds[untouched])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@settings(max_examples=8, deadline=None)
@given(spec=specs(), seed=st.integers(0, 2**16))
def test_ratio_zero_is_identity(case: Case, spec: Spec, seed: int) -> None:
    layout = make_layout(spec, seed=seed)
    config = case.config(rho_audio=0.0, rho_video=0.0)
    plan = make_compressor(case.method, config).plan(layout)
    assert bool(plan.keep.all())
    assert plan.merge_dst.numel() == 0
    assert torch.equal(apply_plan(layout.embeds, plan), layout.embeds)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@settings(max_examples=6, deadline=None)
@given(spec=specs(), seed=st.integers(0, 2**16))
def test_seeded_runs_are_deterministic(case: Case, spec: Spec, seed: int) -> None:
    layout = make_layout(spec, seed=seed)
    config = case.config()
    first = make_compressor(case.method, config).plan(layout)
    second = make_compressor(case.method, config).plan(layout)
    for name in ("keep", "merge_dst", "merge_src", "merge_weight"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert torch.equal(first.chunk_video_ratio.nan_to_num(-1), second.chunk_video_ratio.nan_to_num(-1))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_reset_restores_a_fresh_compressor(case: Case) -> None:
    spec = Spec(chunks=((10, 2), (6, 2), (12, 2)), p=4)
    comp = make_compressor(case.method, case.config())
    first = comp.plan(make_layout(spec, seed=1))
    comp.plan(make_layout(spec, seed=2))
    comp.reset()
    assert torch.equal(comp.plan(make_layout(spec, seed=1)).keep, first.keep)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_layout_without_audio_or_video(case: Case) -> None:
    for spec in (Spec(chunks=((0, 2), (0, 3)), p=4),  # video only
                 Spec(chunks=((9, 0), (7, 0)), p=4),  # audio only
                 Spec(chunks=(), text_head=3)):  # text only
        layout = make_layout(spec)
        config = case.config()
        plan = make_compressor(case.method, config).plan(layout)
        _check_plan_shape(layout, plan)
        check_budget(case, config, layout, plan)


def test_random_depends_on_seed_and_window_time() -> None:
    spec = Spec(chunks=((20, 2), (20, 2)), p=8)
    layout = make_layout(spec)
    a = make_compressor("random", Case("random").config(seed=1)).plan(layout).keep
    b = make_compressor("random", Case("random").config(seed=2)).plan(layout).keep
    c = make_compressor("random", Case("random").config(seed=1)).plan(make_layout(spec, t0_s=2.0)).keep
    assert not torch.equal(a, b)
    assert not torch.equal(a, c)
