"""Streaming OmniZip: causality, window-by-window use, trailing audio selection, end-to-end budget."""

from __future__ import annotations

import pytest
import torch
from omnizip_synth import Spec, make_layout

from omnizip import Modality, OmniZipConfig, TokenLayout, make_compressor

STREAM = OmniZipConfig(mode="streaming")


def slice_chunks(layout: TokenLayout, first: int, last: int) -> tuple[TokenLayout, torch.Tensor]:
    """The tokens of chunks ``first..last`` as their own layout (ids rebased), and their indices."""
    sel = (layout.chunk_id >= first) & (layout.chunk_id <= last)
    idx = torch.nonzero(sel, as_tuple=True)[0]
    frame = layout.frame_id[idx]
    video = frame >= 0
    if bool(video.any()):
        frame = torch.where(video, frame - frame[video].min(), frame)
    audio_rank = torch.cumsum((layout.modality == Modality.AUDIO).to(torch.int64), 0) - 1
    a_idx = idx[layout.modality[idx] == Modality.AUDIO]
    sal = None if layout.audio_saliency is None else layout.audio_saliency[audio_rank[a_idx]]
    sub = TokenLayout(
        embeds=layout.embeds[idx],
        modality=layout.modality[idx],
        chunk_id=layout.chunk_id[idx] - first,
        frame_id=frame,
        audio_saliency=sal,
    )
    return sub, idx


def _spec(n_chunks: int, p: int = 6) -> Spec:
    return Spec(chunks=tuple((10 + (3 * c) % 7, 2) for c in range(n_chunks)), p=p, d=8, text_head=0, text_tail=0)


def test_window_by_window_equals_one_call() -> None:
    layout = make_layout(_spec(8), seed=11)
    whole = make_compressor("omnizip", STREAM).plan(layout)
    stream = make_compressor("omnizip", STREAM)
    for c in range(8):
        sub, idx = slice_chunks(layout, c, c)
        part = stream.plan(sub)
        assert torch.equal(part.keep, whole.keep[idx]), c
        assert part.chunk_video_ratio.tolist() == [whole.chunk_video_ratio[c].item()]


def test_multi_chunk_windows_equal_single_chunk_windows() -> None:
    layout = make_layout(_spec(6), seed=12)
    singles = make_compressor("omnizip", STREAM)
    pairs = make_compressor("omnizip", STREAM)
    for c in range(0, 6, 2):
        sub2, idx2 = slice_chunks(layout, c, c + 1)
        keep2 = pairs.plan(sub2).keep
        keep1 = torch.cat([singles.plan(slice_chunks(layout, k, k)[0]).keep for k in (c, c + 1)])
        assert torch.equal(keep2, keep1)


def test_the_future_does_not_change_the_past() -> None:
    full = make_layout(_spec(7), seed=13)
    plan_full = make_compressor("omnizip", STREAM).plan(full)
    prefix, idx = slice_chunks(full, 0, 3)
    plan_prefix = make_compressor("omnizip", STREAM).plan(prefix)
    assert torch.equal(plan_prefix.keep, plan_full.keep[idx])
    # ... while the offline mode, which sees the whole clip, generally does change
    off_full = make_compressor("omnizip", OmniZipConfig()).plan(full)
    off_prefix = make_compressor("omnizip", OmniZipConfig()).plan(prefix)
    assert not torch.equal(off_prefix.keep, off_full.keep[idx])


def test_trailing_selection_varies_with_content_and_window_scope_does_not() -> None:
    spec = Spec(chunks=((20, 1),) * 6, p=4, text_head=0, text_tail=0)
    layout = make_layout(spec, seed=1)
    # chunk 2 carries much more saliency than its past, chunk 3 much less
    base = torch.tensor([0.2, 0.2, 1.0, 0.1, 0.2, 0.2]).repeat_interleave(20)
    sal = base + torch.linspace(0.0, 0.01, 20).repeat(6)
    layout = TokenLayout(layout.embeds, layout.modality, layout.chunk_id, layout.frame_id, audio_saliency=sal)
    trailing = make_compressor("omnizip", STREAM).plan(layout).chunk_audio_retention.tolist()
    window = make_compressor("omnizip", OmniZipConfig(mode="streaming", stream_audio_scope="window")).plan(
        layout).chunk_audio_retention.tolist()
    # per-window top-k on equal chunks: 14 salient + 1 anchor out of 20, always
    assert window == pytest.approx([0.75] * 6)
    # trailing top-k: chunk 2 is entirely in the top 70 % of what the stream has heard (no anchor left);
    # chunk 3 is entirely below it and keeps only its anchor
    assert trailing[2] == 1.0
    assert trailing[3] == pytest.approx(1 / 20)
    # the first chunk has no past: trailing == window top-k
    assert trailing[0] == window[0]


def test_end_to_end_video_budget_over_any_30_windows() -> None:
    # 70 windows of 12 audio + 2 frames x 4 tokens: per-frame floors matter (floor(4 * .4) = 1 would keep 25 %).
    n_win = 70
    spec = Spec(chunks=((12, 2),) * n_win, p=4, d=8, text_head=0, text_tail=0, clustered=True)
    layout = make_layout(spec, seed=21)
    stream = make_compressor("omnizip", STREAM)
    kept = []
    for c in range(n_win):
        sub, _ = slice_chunks(layout, c, c)
        plan = stream.plan(sub)
        kept.append(int(plan.keep[sub.modality == Modality.VIDEO].sum()))
    for start in range(n_win - 30 + 1):
        assert abs(sum(kept[start : start + 30]) / (30 * 8) - 0.4) <= 0.02 + 1e-9
    assert len(set(kept)) > 1  # the budget moves with the audio
    uniform = make_compressor("uniform", STREAM).plan(layout)
    assert int(uniform.keep[layout.modality == Modality.VIDEO].sum()) == n_win * 2 * 1  # the floor's 25 %


@pytest.mark.parametrize("scope", ["trailing", "window"])
def test_stream_without_saliency_or_video(scope: str) -> None:
    config = OmniZipConfig(mode="streaming", stream_audio_scope=scope)
    audio_only = make_layout(Spec(chunks=((10, 0), (10, 0)), saliency=False))
    plan = make_compressor("omnizip", config).plan(audio_only)
    # per chunk: round(.7 * 10) = 7 salient (evenly spaced without saliency), round(.05 * 10) = 0 anchors
    assert int(plan.keep[audio_only.modality == Modality.AUDIO].sum()) == 2 * 7
    assert plan.chunk_audio_retention.tolist() == pytest.approx([0.7, 0.7])
