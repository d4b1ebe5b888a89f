"""Offline OmniZip against small cases computed by hand from the spec (v2 reference semantics)."""

from __future__ import annotations

import math

import pytest
import torch
from omnizip_synth import Spec, make_layout

from omnizip import Modality, OmniZipConfig, TokenLayout, apply_plan, make_compressor
from omnizip.audio import evenly_spaced, nominal_audio_keep, salient_count
from omnizip.budget import base_video_ratio, frame_keep_count, reference_video_ratios
from omnizip.video import dpc_knn_scores, istc_keep, temporal_similarity


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_dpc_knn_scores_by_hand() -> None:
    # Four unit vectors at 0, 60, 90 and 180 degrees: d_ij = 1 - cos(angle difference).
    angles = [0.0, 60.0, 90.0, 180.0]
    frame = torch.tensor([_unit(a) for a in angles]).unsqueeze(0)
    d = [[1 - math.cos(math.radians(a - b)) for b in angles] for a in angles]
    # k = 2: density from the two nearest neighbours.
    rho = [math.exp(-sum(sorted(d[i][j] for j in range(4) if j != i)[:2]) / 2) for i in range(4)]
    # rho order: token 1 (60 deg) is densest -> its delta is its largest distance (to 180 deg).
    assert max(range(4), key=lambda i: rho[i]) == 1
    delta = [
        min(d[0][1], d[0][2]),  # denser than token 0: tokens 1 and 2
        max(d[1]),  # the peak
        d[2][1],  # only token 1 is denser than token 2
        min(d[3][0], d[3][1], d[3][2]),  # every other token is denser than token 3
    ]
    expected = torch.tensor([rho[i] * delta[i] for i in range(4)])
    got = dpc_knn_scores(frame, knn_k=2)[0]
    assert torch.allclose(got, expected, atol=1e-6)
    # Keeping 2 of the 4 tokens keeps the peak (60 deg) and the outlier (180 deg).
    keep = istc_keep(frame[0], 4, torch.tensor([0]), torch.tensor([2]), knn_k=2)
    assert keep.tolist() == [False, True, False, True]


def test_dpc_knn_k_is_capped_at_p_minus_one() -> None:
    frame = torch.randn(1, 3, 5)
    assert torch.allclose(dpc_knn_scores(frame, knn_k=5), dpc_knn_scores(frame, knn_k=2))


def test_temporal_frame_keeps_the_most_changed_tokens() -> None:
    prev = torch.tensor([_unit(0), _unit(90), _unit(45), _unit(10)])
    curr = torch.tensor([_unit(0), _unit(180), _unit(50), _unit(100)])  # changes: 0, 90, 5, 90 degrees
    sim = temporal_similarity(curr.unsqueeze(0), prev.unsqueeze(0))[0]
    assert torch.allclose(sim, torch.tensor([1.0, math.cos(math.radians(90)), math.cos(math.radians(5)),
                                             math.cos(math.radians(90))]), atol=1e-6)
    video = torch.cat([prev, curr])
    keep = istc_keep(video, 4, torch.tensor([0, 1]), torch.tensor([4, 2]))
    # frame 0 kept whole; frame 1 keeps the two 90-degree changes (tie between them is irrelevant: both kept)
    assert keep.tolist() == [True] * 4 + [False, True, False, True]


def test_reference_renormalisation_by_hand() -> None:
    # S = [1, .5, .75, .25] -> base r0 = .75 - .4 S = [.35, .55, .45, .65]; rho_v = .6 on 4 x 10 tokens.
    ratios = reference_video_ratios([1.0, 0.5, 0.75, 0.25], [10] * 4, rho_video=0.6, rho_min=0.35, rho_max=0.75)
    # lo = window 0 (.35) and hi = window 3 (.65) stay fixed; the others share 24 - 3.5 - 6.5 = 14 tokens:
    # scale 14 / 10 = 1.4 -> [.77 -> .75, .63]; residual 24 - 23.8 = .2 over 20 tokens -> +.01 each, clipped.
    assert ratios == pytest.approx([0.35, 0.75, 0.64, 0.65], abs=1e-12)
    # The budget is then missed by 0.1 token: one clipped pass, no iteration (the reference's behaviour).
    assert sum(r * 10 for r in ratios) == pytest.approx(23.9)


def test_reference_renormalisation_quirks() -> None:
    # Equal base ratios: lo and hi are the same window and the reference counts it twice.
    ratios = reference_video_ratios([0.5] * 3, [10] * 3, rho_video=0.6, rho_min=0.35, rho_max=0.75)
    # fixed = 2 x 5.5 = 11, others' share 18 - 11 = 7 over a base of 11 -> scale .636 -> .35 after clipping;
    # residual 18 - 12.5 = 5.5 over 20 tokens -> +.275 -> .625.
    assert ratios == pytest.approx([0.55, 0.625, 0.625], abs=1e-12)
    # Two or fewer guided windows: base ratios are used as they are.
    assert reference_video_ratios([0.2, 0.9], [10, 10], rho_video=0.6, rho_min=0.35, rho_max=0.75) == \
        pytest.approx([base_video_ratio(0.2, 0.35, 0.75), base_video_ratio(0.9, 0.35, 0.75)])
    # Unguided windows (video without audio) get rho_video and are taken out of the target;
    # windows without video get NaN.
    with_unguided = reference_video_ratios([1.0, 0.5, 0.75, 0.25, math.nan, 0.3], [10, 10, 10, 10, 20, 0],
                                           rho_video=0.6, rho_min=0.35, rho_max=0.75)
    assert with_unguided[:5] == pytest.approx([0.35, 0.75, 0.64, 0.65, 0.6], abs=1e-12)
    assert math.isnan(with_unguided[5])


def test_base_ratio_is_the_linear_map() -> None:
    assert base_video_ratio(0.0, 0.35, 0.75) == pytest.approx(0.75)
    assert base_video_ratio(1.0, 0.35, 0.75) == pytest.approx(0.35)
    assert base_video_ratio(0.5, 0.35, 0.75) == pytest.approx(0.55)


def test_rounding_rules_follow_the_reference() -> None:
    assert salient_count(50, 0.3) == 35
    assert nominal_audio_keep(50, 0.3, 0.05, 3) == 37  # round(2.5) == 2 (Python rounds half to even)
    assert nominal_audio_keep(50, 0.3, 0.05, 0) == 35  # no anchors when G = 0
    assert nominal_audio_keep(7, 0.0, 0.05, 3) == 7
    assert frame_keep_count(144, 0.6) == 57  # floor(57.6)
    assert frame_keep_count(1, 0.6) == 0  # one token per frame at 60 %: the reference keeps none
    assert evenly_spaced(10, 3).tolist() == [1, 5, 8]


def _anchor_layout() -> tuple[TokenLayout, torch.Tensor]:
    # 10 audio tokens, then one 2-token video frame, D = 4.
    audio = torch.tensor([
        [0.0, 0.0, 1.0, 1.0],  # 0 salient
        [3.0, 1.0, 0.0, 0.0],  # 1 -> the anchor (first non-salient token)
        [0.0, 0.0, 2.0, 0.0],  # 2 salient
        [2.0, 0.0, 0.0, 0.0],  # 3 pool, sigma = 1 (parallel to video token 0)
        [0.0, 0.0, 0.0, 3.0],  # 4 salient
        [0.0, 0.0, 1.0, 0.0],  # 5 pool, sigma = 0
        [1.0, 1.0, 0.0, 0.0],  # 6 pool, sigma = 1/sqrt(2)
        [0.0, 0.0, 0.0, 1.0],  # 7 pool, sigma = 0 (tie with token 5: the earlier one wins)
        [0.0, 1.0, 1.0, 0.0],  # 8 salient
        [1.0, 0.0, 1.0, 1.0],  # 9 salient
    ])
    video = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    embeds = torch.cat([audio, video])
    saliency = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.05, 0.15, 0.6, 0.5])
    modality = torch.tensor([Modality.AUDIO] * 10 + [Modality.VIDEO] * 2)
    layout = TokenLayout(
        embeds=embeds,
        modality=modality,
        chunk_id=torch.zeros(12, dtype=torch.int64),
        frame_id=torch.tensor([-1] * 10 + [0, 0]),
        audio_saliency=saliency,
    )
    return layout, audio


def test_anchor_merge_formula_by_hand() -> None:
    layout, audio = _anchor_layout()
    config = OmniZipConfig(rho_audio=0.5, rho_video=0.0, g=3, anchor_ratio=0.1)
    plan = make_compressor("omnizip", config).plan(layout)
    # salient = top 5 by saliency = {0, 2, 4, 8, 9}; remaining R = [1, 3, 5, 6, 7]; C = round(1.0) = 1,
    # stride 5 -> anchor R[0] = 1; pool {3, 5, 6, 7} all join anchor 1; top-3 by sigma: 3, 6, then 5 (tie
    # with 7 at sigma 0 goes to the earlier token).
    assert plan.keep[:10].tolist() == [True, True, True, False, True, False, False, False, True, True]
    assert plan.merge_dst.tolist() == [1, 1, 1]
    assert plan.merge_src.tolist() == [3, 6, 5]

    def cos(x: torch.Tensor, y: torch.Tensor) -> float:
        return float(x @ y) / ((float(x.norm()) + 1e-6) * (float(y.norm()) + 1e-6))

    video = layout.embeds[10:]
    sigma = [max(cos(audio[m], v) for v in video) for m in (3, 6, 5)]
    assert sigma == pytest.approx([1.0, 1 / math.sqrt(2), 0.0], abs=1e-5)
    e = [math.exp(s) for s in sigma]
    w = [x / sum(e) for x in e]
    assert plan.merge_weight.tolist() == pytest.approx(w, abs=1e-6)
    merged = (audio[1] + sum(wi * audio[m] for wi, m in zip(w, (3, 6, 5), strict=True))) / (1 + sum(w))
    out = apply_plan(layout.embeds, plan)
    assert torch.allclose(out[1], merged, atol=1e-6)
    # the softmax sums to one, so the anchor is an equal blend of itself and its weighted members
    assert torch.allclose(out[1], 0.5 * audio[1] + 0.5 * sum(wi * audio[m] for wi, m in zip(w, (3, 6, 5), strict=True)),
                          atol=1e-6)
    # retention S = 6 / 10 kept (5 salient + 1 anchor); rho_video = 0 leaves the video alone
    assert plan.chunk_audio_retention.tolist() == pytest.approx([0.6])
    assert bool(plan.keep[10:].all())


def test_without_video_the_score_is_the_anchor_similarity() -> None:
    layout, audio = _anchor_layout()
    audio_only = TokenLayout(embeds=audio, modality=layout.modality[:10], chunk_id=layout.chunk_id[:10],
                             frame_id=layout.frame_id[:10], audio_saliency=layout.audio_saliency)
    plan = make_compressor("omnizip", OmniZipConfig(rho_audio=0.5, g=2, anchor_ratio=0.1)).plan(audio_only)
    # sigma = cos with anchor 1 = (3, 1, 0, 0): token 3 -> .949, token 6 -> .894, tokens 5 and 7 -> 0
    assert plan.merge_src.tolist() == [3, 6]


def test_g_zero_disables_anchors() -> None:
    layout, _ = _anchor_layout()
    plan = make_compressor("omnizip", OmniZipConfig(rho_audio=0.5, rho_video=0.0, g=0)).plan(layout)
    assert plan.merge_dst.numel() == 0
    assert int(plan.keep[:10].sum()) == 5


def test_retention_scores_drive_the_video_ratio() -> None:
    # Three chunks of 10 audio + 2 frames x 8 tokens; saliency puts chunk 0 entirely on top.
    spec = Spec(chunks=((10, 2), (10, 2), (10, 2)), p=8, d=8)
    layout = make_layout(spec, seed=3)
    sal = torch.tensor([1.0] * 10 + [0.5] * 10 + [0.1] * 10)
    layout = TokenLayout(embeds=layout.embeds, modality=layout.modality, chunk_id=layout.chunk_id,
                         frame_id=layout.frame_id, audio_saliency=sal, positions=layout.positions)
    config = OmniZipConfig(rho_audio=0.5, rho_video=0.6, g=3, anchor_ratio=0.1)
    plan = make_compressor("omnizip", config).plan(layout)
    retention = plan.chunk_audio_retention.tolist()
    # 15 salient: chunk 0 whole, then the 5 earliest of chunk 1 (equal saliency: earlier wins);
    # 3 anchors from the 15 remaining, stride 5: chunk-1 token 5, chunk-2 tokens 0 and 5.
    assert retention == pytest.approx([1.0, 0.6, 0.2])
    ratios = plan.chunk_video_ratio.tolist()
    assert ratios[0] == pytest.approx(0.35) and ratios[2] == pytest.approx(0.67)  # fixed lo/hi
    # 3 guided windows: the middle one absorbs the budget: 0.6 * 48 - .35 * 16 - .67 * 16 = 12.48 tokens
    assert ratios[1] == pytest.approx(min(0.75, 12.48 / 16), abs=1e-6)


def test_video_without_audio_gets_plain_istc_at_rho_video() -> None:
    layout = make_layout(Spec(chunks=((0, 2), (0, 2), (0, 1)), p=10), seed=5)
    plan = make_compressor("omnizip", OmniZipConfig(rho_video=0.6)).plan(layout)
    video = layout.modality == Modality.VIDEO
    assert int((plan.keep & video).sum()) == 5 * 4  # floor(10 * 0.4) per frame
    assert plan.chunk_video_ratio.tolist() == pytest.approx([0.6] * 3)
    assert math.isnan(plan.chunk_audio_retention[0].item())


def test_one_token_per_frame_follows_the_floor_rule() -> None:
    layout = make_layout(Spec(chunks=((8, 2), (8, 2), (8, 2)), p=1), seed=2)
    plan = make_compressor("omnizip", OmniZipConfig()).plan(layout)
    assert not bool(plan.keep[layout.modality == Modality.VIDEO].any())
    assert bool(plan.keep[layout.modality == Modality.TEXT].all())


def test_unequal_windows_and_odd_counts() -> None:
    layout = make_layout(Spec(chunks=((13, 1), (7, 3), (21, 2), (1, 1)), p=6, text_between=True), seed=9)
    config = OmniZipConfig(rho_audio=0.3, rho_video=0.6)
    plan = make_compressor("omnizip", config).plan(layout)
    n_audio = int((layout.modality == Modality.AUDIO).sum())
    assert int(plan.keep[layout.modality == Modality.AUDIO].sum()) == nominal_audio_keep(n_audio, 0.3, 0.05, 3)
    assert torch.isfinite(plan.chunk_video_ratio).all()


def test_bad_layouts_raise_clear_errors() -> None:
    layout = make_layout(Spec(chunks=((4, 2),), p=4))
    bad_frames = layout.frame_id.clone()
    bad_frames[layout.modality == Modality.VIDEO] = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="same token count"):
        make_compressor("omnizip").plan(TokenLayout(layout.embeds, layout.modality, layout.chunk_id, bad_frames))
    bad_chunks = layout.chunk_id.clone()
    bad_chunks[layout.modality == Modality.AUDIO] = -1
    with pytest.raises(ValueError, match="chunk_id"):
        make_compressor("omnizip").plan(TokenLayout(layout.embeds, layout.modality, bad_chunks, layout.frame_id))
    nan_sal = torch.full((4,), float("nan"))
    with pytest.raises(ValueError, match="finite"):
        make_compressor("omnizip").plan(TokenLayout(layout.embeds, layout.modality, layout.chunk_id,
                                                    layout.frame_id, audio_saliency=nan_sal))


def test_fast_istc_matches_the_reference_order_on_random_frames() -> None:
    # The streaming path computes the same cosines from Gram matrices and norms; away from exact
    # near-ties the kept tokens are the same.
    g = torch.Generator().manual_seed(0)
    p, f = 12, 6
    video = torch.randn(f * p, 16, generator=g) + torch.randn(1, 16, generator=g)
    pos = torch.tensor([0, 1, 0, 1, 2, 3])
    counts = torch.tensor([5, 4, 7, 3, 6, 2])
    exact = istc_keep(video, p, pos, counts)
    fast = istc_keep(video, p, pos, counts, exact=False)
    assert torch.equal(exact, fast)
    normed = torch.nn.functional.normalize(video.view(f, p, 16), dim=-1)
    from omnizip.video import _dpc_from_normed, _dpc_from_raw

    raw = _dpc_from_raw(video.view(f, p, 16), video.view(f, p, 16).norm(dim=-1), 5)
    assert torch.allclose(raw, _dpc_from_normed(normed, 5), atol=1e-5)


def test_istc_rejects_a_temporal_frame_without_predecessor() -> None:
    video = torch.randn(8, 4)
    with pytest.raises(ValueError, match="previous frame"):
        istc_keep(video, 4, torch.tensor([1, 0]), torch.tensor([2, 2]))
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        istc_keep(video, 4, torch.tensor([0, 1]), torch.tensor([5, 2]))


def test_one_window_uses_the_base_ratio() -> None:
    # A single guided window: no re-normalisation (the reference needs more than two), r = r0(S).
    layout = make_layout(Spec(chunks=((40, 2),), p=10), seed=6)
    plan = make_compressor("omnizip", OmniZipConfig()).plan(layout)
    s = plan.chunk_audio_retention[0].item()
    assert s == pytest.approx(30 / 40)  # round(.7 * 40) = 28 salient + round(.05 * 40) = 2 anchors
    assert plan.chunk_video_ratio[0].item() == pytest.approx(base_video_ratio(s, 0.35, 0.75))
    assert int(plan.keep[layout.modality == Modality.VIDEO].sum()) == 2 * frame_keep_count(10, 0.45)
