"""encode_av_many: the windows of several streams through one audio-tower and one vision-tower call,
each request getting exactly (fp32: within 1e-5) what it gets encoded alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omni_helpers import make_adapter, synthetic_clip

from omnizip.adapters.base import AVCursor, EncodedAV
from omnizip.adapters.batch_encode import EncodeRequest, encode_av_many

ATOL = 1e-5
FAMILIES = ["small25", "small3"]


@pytest.fixture(scope="module")
def small25(tiny25):
    """Qwen2.5 tiny with 16 LLM tokens per frame (the tests run many windows; sizes still differ per aspect)."""
    return make_adapter(tiny25, video_max_pixels=16 * 28 * 28)


@pytest.fixture(scope="module")
def small3(tiny3):
    return make_adapter(tiny3, video_max_pixels=16 * 32 * 32)


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, what
    if a.is_floating_point():
        assert a.numel() == 0 or float((a.float() - b.float()).abs().max()) <= ATOL, what
    else:
        assert torch.equal(a, b), what


def assert_same_encoding(got: EncodedAV, want: EncodedAV) -> None:
    """Layout (embeds, saliency, positions, modality, chunks, frames), ids, extras, cursor, close position."""
    g, w = got.layout, want.layout
    for name in ("embeds", "modality", "chunk_id", "frame_id", "positions"):
        _close(getattr(g, name), getattr(w, name), name)
    assert (g.audio_saliency is None) == (w.audio_saliency is None)
    if w.audio_saliency is not None:
        _close(g.audio_saliency, w.audio_saliency, "audio_saliency")
    _close(got.token_ids, want.token_ids, "token_ids")
    assert got.extras.keys() == want.extras.keys()
    if "deepstack" in want.extras:
        assert len(got.extras["deepstack"]) == len(want.extras["deepstack"]) > 0
        for level_got, level_want in zip(got.extras["deepstack"], want.extras["deepstack"], strict=True):
            _close(level_got, level_want, "deepstack")
        _close(got.extras["video_feature_index"], want.extras["video_feature_index"], "video_feature_index")
    gc, wc = got.next_cursor, want.next_cursor
    assert (gc.base, gc.audio_tokens, gc.grids) == (wc.base, wc.audio_tokens, wc.grids)
    assert (gc.audio_tail is None) == (wc.audio_tail is None)
    if wc.audio_tail is not None:
        np.testing.assert_array_equal(gc.audio_tail, wc.audio_tail)
    assert (gc.mel_max_log10 is None) == (wc.mel_max_log10 is None)
    if wc.mel_max_log10 is not None:
        assert abs(gc.mel_max_log10 - wc.mel_max_log10) <= ATOL
    assert got.close_position == want.close_position
    assert (got.audio_s, got.video_frames) == (want.audio_s, want.video_frames)


def _mixed_requests() -> list[EncodeRequest]:
    """Audio+video, audio-only and video-only windows of different streams, sizes and stream positions."""
    wav_a, frames_a = synthetic_clip(2.0, seed=1)
    wav_b, frames_b = synthetic_clip(4.0, seed=2, size=(96, 160))
    wav_c, _ = synthetic_clip(3.5, seed=3, video=False)
    _, frames_d = synthetic_clip(1.5, seed=4, size=(120, 80), audio=False)
    wav_e, frames_e = synthetic_clip(2.0, seed=5, size=(64, 200))
    wav_f, _ = synthetic_clip(0.6, seed=6, video=False)
    return [
        EncodeRequest(wav_a, frames_a, AVCursor(5)),  # a stream's first window
        # the second window of a stream: left context and running mel floor from its first window
        EncodeRequest(wav_b[32000:], frames_b[4:], AVCursor(9, 50, 2, wav_b[32000 - 400:32000], 0.25)),
        EncodeRequest(wav_c[8000:], None, AVCursor(3, 75, 0, wav_c[7600:8000], -0.5)),  # audio only, 3 s
        EncodeRequest(None, frames_d, AVCursor(40, 0, 6), video_fps=1.5),  # video only, odd frame count
        EncodeRequest(wav_e, frames_e, AVCursor(7, 100, 4, wav_a[-400:], 0.1), saliency="global", interleave=False),
        EncodeRequest(wav_f, None, AVCursor(11), saliency=None),  # shorter than one Qwen3 audio chunk
        EncodeRequest(wav_a[:24000], frames_a[:3], AVCursor(2), stream=False),  # a whole clip, 1.5 s
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_one_at_a_time_on_a_mix_of_streams(request, family):
    adapter = request.getfixturevalue(family)
    reqs = _mixed_requests()
    batched = encode_av_many(adapter, reqs)
    reference = encode_av_many(adapter, reqs, batched=False)
    assert len(batched) == len(reqs)
    for got, want in zip(batched, reference, strict=True):
        assert_same_encoding(got, want)
    assert batched[0].layout.audio_saliency is not None and batched[5].layout.audio_saliency is None
    if family == "small3":
        assert "deepstack" in batched[1].extras


@pytest.mark.parametrize("family", FAMILIES)
def test_each_tower_runs_once_for_all_streams(request, family, monkeypatch):
    adapter = request.getfixturevalue(family)
    core = adapter.thinker.model
    calls = {"audio": [], "video": []}
    audio_fn, video_fn = core.get_audio_features, core.get_video_features

    def audio_spy(features, **kwargs):
        calls["audio"].append(features.shape[0])
        return audio_fn(features, **kwargs)

    def video_spy(pixels, grid_thw, **kwargs):
        calls["video"].append(grid_thw.shape[0])
        return video_fn(pixels, grid_thw, **kwargs)

    monkeypatch.setattr(core, "get_audio_features", audio_spy)
    monkeypatch.setattr(core, "get_video_features", video_spy)
    reqs = [r for r in _mixed_requests() if r.audio is None or len(r.audio) >= 16000]  # >= one audio chunk
    encode_av_many(adapter, reqs)
    assert calls["audio"] == [sum(r.audio is not None for r in reqs)]
    assert calls["video"] == [sum(r.frames is not None for r in reqs)]


def test_qwen3_audio_shorter_than_a_chunk_gets_its_own_call(small3, monkeypatch):
    """Qwen3's tower sizes its attention windows from a call's longest chunk: a sub-chunk window is not packed."""
    core = small3.thinker.model
    rows = []
    audio_fn = core.get_audio_features

    def audio_spy(features, **kwargs):
        rows.append(features.shape[0])
        return audio_fn(features, **kwargs)

    monkeypatch.setattr(core, "get_audio_features", audio_spy)
    long_wav, _ = synthetic_clip(2.0, seed=1, video=False)
    short_wav, _ = synthetic_clip(0.6, seed=2, video=False)
    reqs = [EncodeRequest(long_wav, None, AVCursor(1)), EncodeRequest(short_wav, None, AVCursor(1)),
            EncodeRequest(long_wav[:24000], None, AVCursor(1))]
    out = encode_av_many(small3, reqs)
    assert sorted(rows) == [1, 2]
    for got, r in zip(out, reqs, strict=True):
        assert_same_encoding(got, small3.encode_av(r.audio, r.frames, r.cursor, stream=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_streams_continue_from_their_own_batched_cursors(request, family):
    """Three streams, two windows each, batched window by window == each stream encoded alone."""
    adapter = request.getfixturevalue(family)
    clips = [synthetic_clip(4.0, seed=10), synthetic_clip(4.0, seed=11, size=(96, 160)),
             synthetic_clip(4.0, seed=12, video=False)]
    bases = [5, 17, 3]

    def window(stream: int, k: int, cursor: AVCursor) -> EncodeRequest:
        wav, frames = clips[stream]
        return EncodeRequest(wav[k * 32000:(k + 1) * 32000], None if frames is None else frames[4 * k:4 * k + 4], cursor)

    batched_cursors = [AVCursor(b) for b in bases]
    alone_cursors = [AVCursor(b) for b in bases]
    for k in range(2):
        got = encode_av_many(adapter, [window(s, k, batched_cursors[s]) for s in range(3)])
        for s in range(3):
            r = window(s, k, alone_cursors[s])
            want = adapter.encode_av(r.audio, r.frames, r.cursor, stream=True)
            assert_same_encoding(got[s], want)
            batched_cursors[s], alone_cursors[s] = got[s].next_cursor, want.next_cursor
    assert batched_cursors[0].audio_tokens > 0 and batched_cursors[1].grids == 4


def test_a_request_without_audio_or_video_is_refused(small25):
    wav, _ = synthetic_clip(2.0, video=False)
    with pytest.raises(ValueError, match="audio or video"):
        encode_av_many(small25, [EncodeRequest(wav, None, AVCursor(1)), EncodeRequest(None, None, AVCursor(1))])


class _Attention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(4, 4)
        self.k_proj = torch.nn.Linear(4, 4)

    def forward(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        return self.q_proj(hidden) + self.k_proj(hidden)


def test_capture_split_gives_each_request_its_rows_and_blocks():
    from omnizip.adapters.capture import QKCapture

    attn = _Attention()
    hidden = torch.randn(9, 4)
    with QKCapture(attn) as cap:
        attn(hidden, torch.tensor([0, 2, 5, 6, 9]))  # blocks 2, 3 | 1 | 3
    parts = cap.split([5, 1, 3])
    assert [b for _, _, b in parts] == [[2, 3], [1], [3]]
    torch.testing.assert_close(parts[2][0], attn.q_proj(hidden)[6:], rtol=0, atol=0)
    torch.testing.assert_close(parts[1][1], attn.k_proj(hidden)[5:6], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="do not split"):
        cap.split([4, 5])  # a block straddles the two requests
    with pytest.raises(RuntimeError, match="positions"):
        cap.split([5, 1])
