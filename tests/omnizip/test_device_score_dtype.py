"""``OmniZipConfig.score_dtype``: float32 scores by default, bfloat16 to mimic the reference's bf16 scoring."""

from __future__ import annotations

import pytest
import torch
from omnizip_synth import Spec, make_layout

from omnizip import OmniZipConfig, make_compressor
from omnizip.audio import max_cosine, normalise_rows
from omnizip.video import istc_keep

SPEC = Spec(chunks=((20, 4), (18, 4), (22, 4)), p=16, d=32, clustered=True)


def test_score_dtype_is_validated() -> None:
    with pytest.raises(ValueError, match="score_dtype"):
        OmniZipConfig(score_dtype="float16")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["offline", "streaming"])
def test_bf16_scoring_changes_which_tokens_win_but_not_the_budget(mode: str) -> None:
    layout = make_layout(SPEC, seed=0, dtype=torch.bfloat16)
    fp32 = make_compressor("omnizip", OmniZipConfig(mode=mode)).plan(layout)
    default = make_compressor("omnizip", OmniZipConfig(mode=mode, score_dtype="float32")).plan(layout)
    bf16 = make_compressor("omnizip", OmniZipConfig(mode=mode, score_dtype="bfloat16")).plan(layout)
    assert torch.equal(fp32.keep, default.keep) and torch.equal(fp32.merge_src, default.merge_src)
    # bf16 rounding of the scores reorders near-ties: other tokens are kept ...
    assert not torch.equal(fp32.keep, bf16.keep)
    # ... at the same budget (same counts per modality, same per-chunk ratios).
    for key in ("audio_kept", "video_kept", "text_kept"):
        assert fp32.stats[key] == bf16.stats[key]
    if mode == "offline":
        assert torch.equal(fp32.chunk_video_ratio, bf16.chunk_video_ratio)


def test_bf16_scores_are_bf16_arithmetic() -> None:
    gen = torch.Generator().manual_seed(1)
    audio, video = torch.randn(6, 16, generator=gen), torch.randn(40, 16, generator=gen)
    q = normalise_rows(audio, torch.bfloat16)
    assert q.dtype == torch.bfloat16
    got = max_cosine(q, video)
    v = video.to(torch.bfloat16)
    want = ((q @ v.T) / (v.norm(dim=-1) + 1e-6)).amax(dim=1).to(torch.float32)
    assert torch.equal(got, want)
    # float32 scores are not rounded to bf16
    full = max_cosine(normalise_rows(audio), video)
    assert not torch.equal(full, full.to(torch.bfloat16).to(torch.float32))


def test_istc_bf16_differs_from_fp32_on_near_ties() -> None:
    layout = make_layout(SPEC, seed=0, dtype=torch.bfloat16)
    video = layout.embeds[layout.modality == 2]
    frames = video.shape[0] // SPEC.p
    pos = torch.arange(frames) % 4
    counts = torch.full((frames,), SPEC.p // 3)
    fp32 = istc_keep(video, SPEC.p, pos, counts)
    bf16 = istc_keep(video, SPEC.p, pos, counts, score_dtype=torch.bfloat16)
    assert int(fp32.sum()) == int(bf16.sum()) == frames * (SPEC.p // 3)
    assert not torch.equal(fp32, bf16)
