"""What distinguishes each baseline (budgets and invariants are in the case table)."""

from __future__ import annotations

import torch
from omnizip_synth import Spec, make_layout

from omnizip import Modality, OmniZipConfig, TokenLayout, make_compressor


def _static_video_layout(changed: list[tuple[int, int]], n_frames: int = 4, p: int = 6, d: int = 8) -> TokenLayout:
    """One chunk: ``n_frames`` copies of the same frame except the (frame, token) pairs in ``changed``."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(p, d, generator=g)
    frames = base.repeat(n_frames, 1, 1)
    for f, i in changed:
        frames[f, i] = torch.randn(d, generator=g)
    n = n_frames * p
    return TokenLayout(
        embeds=frames.reshape(n, d),
        modality=torch.full((n,), int(Modality.VIDEO)),
        chunk_id=torch.zeros(n, dtype=torch.int64),
        frame_id=torch.arange(n) // p,
    )


def test_dycoke_keeps_the_reference_frame_and_the_changed_tokens() -> None:
    changed = [(1, 2), (2, 4), (3, 0)]
    layout = _static_video_layout(changed)
    # budget: floor(6 * .5) = 3 per frame -> 12 tokens = frame 0 (6) + the 3 changed + 3 more
    plan = make_compressor("dycoke", OmniZipConfig(rho_video=0.5)).plan(layout)
    keep = plan.keep.view(4, 6)
    assert bool(keep[0].all())
    for f, i in changed:
        assert bool(keep[f, i])
    assert int(keep.sum()) == 12


def test_dycoke_prunes_the_reference_frame_only_when_the_budget_requires() -> None:
    # 2-frame window at 70 % pruning: budget floor(6 * .3) * 2 = 2 < 6 tokens of the reference frame
    layout = _static_video_layout([(1, 3)], n_frames=2)
    plan = make_compressor("dycoke", OmniZipConfig(rho_video=0.7, mode="streaming")).plan(layout)
    keep = plan.keep.view(2, 6)
    assert int(keep.sum()) == 2 and not bool(keep[1].any())
    # the reference token whose successor changed (token 3) is the least redundant one
    assert bool(keep[0, 3])


def test_dycoke_audio_drops_repeated_tokens() -> None:
    g = torch.Generator().manual_seed(1)
    d, n = 8, 20
    steady = torch.randn(d, generator=g)
    audio = steady.repeat(n, 1)
    distinct = [5, 11, 17]
    for i in distinct:
        audio[i] = torch.randn(d, generator=g)
    layout = TokenLayout(
        embeds=audio,
        modality=torch.full((n,), int(Modality.AUDIO)),
        chunk_id=torch.zeros(n, dtype=torch.int64),
        frame_id=torch.full((n,), -1),
    )
    # budget round(.5 * 20) + round(.05 * 20) = 11 tokens: the 5 group references, the 3 distinct ones, 3 more
    plan = make_compressor("dycoke", OmniZipConfig(rho_audio=0.5)).plan(layout)
    assert int(plan.keep.sum()) == 11
    assert all(bool(plan.keep[i]) for i in distinct)
    assert all(bool(plan.keep[i]) for i in range(0, n, 4))


def test_uniform_is_omnizip_audio_with_a_fixed_video_ratio() -> None:
    layout = make_layout(Spec(chunks=((20, 2), (8, 2), (30, 2), (14, 2)), p=10), seed=4)
    config = OmniZipConfig()
    uni = make_compressor("uniform", config).plan(layout)
    omz = make_compressor("omnizip", config).plan(layout)
    audio = layout.modality == Modality.AUDIO
    assert torch.equal(uni.keep[audio], omz.keep[audio])
    assert torch.equal(uni.merge_src, omz.merge_src) and torch.allclose(uni.merge_weight, omz.merge_weight)
    assert torch.allclose(uni.chunk_video_ratio, torch.full((4,), 0.6))
    assert not torch.allclose(omz.chunk_video_ratio, torch.tensor(0.6))  # omnizip adapts per window


def test_random_keeps_uniformly_distributed_tokens() -> None:
    layout = make_layout(Spec(chunks=((100, 0),)), seed=0)
    plan = make_compressor("random", OmniZipConfig(rho_audio=0.5, g=0)).plan(layout)
    audio_keep = plan.keep[layout.modality == Modality.AUDIO]
    assert int(audio_keep.sum()) == 50
    assert 10 <= int(audio_keep[:50].sum()) <= 40  # not a prefix, not a stride
