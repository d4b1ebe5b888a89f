"""compress_sequence / layout_from_ids: the reference-compatible entry point."""

from __future__ import annotations

import pytest
import torch

from omnizip import Modality, OmniZipConfig, compress_sequence, layout_from_ids, make_compressor

AUD, VID = 151646, 151656


def _sequence(windows: list[tuple[int, int]], p_hw=(4, 6), d=16, text=(3, 2), seed=0):
    """Qwen order: text, then per window its video frames then its audio, then text."""
    h, w = p_hw
    p = (h // 2) * (w // 2)
    ids = [1] * text[0]
    frames = 0
    for n_audio, n_frames in windows:
        ids += [VID] * (p * n_frames) + [AUD] * n_audio
        frames += n_frames
    ids += [2] * text[1]
    g = torch.Generator().manual_seed(seed)
    ids_t = torch.tensor(ids)
    embeds = torch.randn(len(ids), d, generator=g)
    saliency = torch.rand(int((ids_t == AUD).sum()), generator=g)
    grid = torch.tensor([[frames, h, w]]) if frames else None
    return embeds, ids_t, saliency, grid, p


def test_layout_from_ids_reads_runs_and_frames() -> None:
    embeds, ids, sal, grid, p = _sequence([(5, 2), (4, 1), (0, 1)], p_hw=(4, 4))
    layout = layout_from_ids(embeds, ids, sal, audio_token_id=AUD, video_token_id=VID, video_grid_thw=grid)
    assert p == 4
    video = layout.modality == Modality.VIDEO
    audio = layout.modality == Modality.AUDIO
    assert layout.chunk_id[video].tolist() == [0] * 8 + [1] * 4 + [2] * 4
    assert layout.chunk_id[audio].tolist() == [0] * 5 + [1] * 4
    assert layout.frame_id[video].tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert bool((layout.chunk_id[~(video | audio)] == -1).all())
    assert layout.num_chunks == 3


@pytest.mark.parametrize("mode", ["offline", "streaming"])
def test_compress_sequence_matches_the_compressor(mode: str) -> None:
    embeds, ids, sal, grid, _ = _sequence([(50, 2)] * 5 + [(37, 2)])
    before = (embeds.clone(), ids.clone(), sal.clone())
    config = OmniZipConfig(mode=mode)
    out, keep = compress_sequence(embeds, ids, sal, audio_token_id=AUD, video_token_id=VID,
                                  video_grid_thw=grid, config=config)
    assert torch.equal(embeds, before[0]) and torch.equal(ids, before[1]) and torch.equal(sal, before[2])
    assert keep.dtype == torch.bool and keep.shape == ids.shape
    assert out.shape == embeds.shape and out.dtype == embeds.dtype
    assert bool(keep[(ids != AUD) & (ids != VID)].all())
    layout = layout_from_ids(embeds, ids, sal, audio_token_id=AUD, video_token_id=VID, video_grid_thw=grid)
    plan = make_compressor("omnizip", config).plan(layout)
    assert torch.equal(keep, plan.keep)
    changed = (out != embeds).any(dim=1)
    assert torch.equal(torch.nonzero(changed, as_tuple=True)[0], torch.unique(plan.merge_dst))


def test_offline_and_streaming_differ_on_the_same_input() -> None:
    embeds, ids, sal, grid, _ = _sequence([(50, 2)] * 6, seed=3)
    kw = dict(audio_token_id=AUD, video_token_id=VID, video_grid_thw=grid)
    _, off = compress_sequence(embeds, ids, sal, config=OmniZipConfig(mode="offline"), **kw)
    _, on = compress_sequence(embeds, ids, sal, config=OmniZipConfig(mode="streaming"), **kw)
    assert not torch.equal(off, on)


def test_video_without_audio_and_audio_without_video() -> None:
    embeds, ids, _, grid, p = _sequence([(0, 2), (0, 2)])
    out, keep = compress_sequence(embeds, ids, None, audio_token_id=AUD, video_token_id=VID,
                                  video_grid_thw=grid, config=OmniZipConfig())
    assert int(keep[ids == VID].sum()) == 4 * int(p * 0.4)
    assert torch.equal(out, embeds)
    embeds, ids, sal, grid, _ = _sequence([(20, 0), (20, 0)])
    assert grid is None
    _, keep = compress_sequence(embeds, ids, sal, audio_token_id=AUD, video_token_id=VID,
                                video_grid_thw=None, config=OmniZipConfig())
    assert int(keep[ids == AUD].sum()) == 28 + 2  # round(.7 * 40) salient + round(.05 * 40) anchors


def test_other_methods_through_the_same_entry_point() -> None:
    embeds, ids, sal, grid, _ = _sequence([(50, 2)] * 3)
    for method in ("identity", "random", "uniform", "dycoke"):
        _, keep = compress_sequence(embeds, ids, sal, audio_token_id=AUD, video_token_id=VID,
                                    video_grid_thw=grid, config=OmniZipConfig(), method=method)
        assert keep.shape == ids.shape


def test_bad_inputs_raise_clear_errors() -> None:
    embeds, ids, sal, grid, _ = _sequence([(10, 2), (10, 2)])
    kw = dict(audio_token_id=AUD, video_token_id=VID, config=OmniZipConfig())
    with pytest.raises(ValueError, match="video_grid_thw"):
        compress_sequence(embeds, ids, sal, video_grid_thw=torch.tensor([[5, 4, 6]]), **kw)
    with pytest.raises(ValueError, match="required"):
        compress_sequence(embeds, ids, sal, video_grid_thw=None, **kw)
    with pytest.raises(ValueError, match="audio_saliency"):
        compress_sequence(embeds, ids, sal[:-1], video_grid_thw=grid, **kw)
    with pytest.raises(ValueError, match=r"\[L, D\]"):
        compress_sequence(embeds[None], ids, sal, video_grid_thw=grid, **kw)
    with pytest.raises(ValueError, match="unknown compression method"):
        compress_sequence(embeds, ids, sal, video_grid_thw=grid, method="fastv", **kw)
    # a video run that is not a whole number of frames
    bad_ids = ids.clone()
    first_video = int(torch.nonzero(ids == VID)[0])
    bad_ids[first_video] = 1
    bad_ids = torch.cat([bad_ids, torch.tensor([VID])])
    with pytest.raises(ValueError, match="whole frames"):
        compress_sequence(torch.randn(len(bad_ids), 16), bad_ids, sal, video_grid_thw=grid, **kw)
