"""StreamEngine + RollingKVCache against one-shot prefills (tiny Qwen2.5-Omni, fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omni_helpers import clip_windows, make_adapter, synthetic_clip

from omnizip.preprocess import log_mel_window, preprocess_video
from omnizip_stream.config import StreamConfig, config_from_mapping
from omnizip_stream.engine import StreamEngine
from omnizip_stream.kv import CacheFullError
from omnizip_stream.query.base import QueryError
from omnizip_stream.window import Window
from omnizip_stream.windowing import on_grid

PIXELS = 56 * 56  # 2x2 merged tokens per grid: keeps the long tests fast
Q = "What just happened?"


def _engine(tiny25, **overrides) -> StreamEngine:
    adapter = make_adapter(tiny25, video_max_pixels=overrides.pop("video_max_pixels", PIXELS))
    cfg = config_from_mapping({"model": "tiny", "method": "identity", "max_new_tokens": 8, "max_question_tokens": 32,
                               **overrides})
    return StreamEngine(adapter, cfg)


def _stock_reference(engine: StreamEngine, tiny25, windows: list[Window]) -> torch.Tensor:
    """Stock thinker forward over the whole stream as one clip, fed the engine's per-window mels."""
    adapter = engine.adapter
    parts = adapter.prompt_parts("", engine.config.system_prompt)
    ids = parts.prefix + adapter.open_ids(True, True)
    mels, tail, run_max = [], None, None
    from omnizip.adapters.base import AVCursor

    cursor = AVCursor(base=len(parts.prefix) + 1)
    for w in windows:
        enc = adapter.encode_av(w.audio, w.frames, cursor, saliency=None, stream=True)
        ids += enc.token_ids.tolist()
        mel = log_mel_window(w.audio, tail, running_max_log10=run_max, cfg=adapter.audio_cfg)
        mels.append(mel.input_features)
        tail, run_max = enc.next_cursor.audio_tail, mel.max_log10
        cursor = enc.next_cursor
    ids += adapter.close_ids(True, True) + adapter.prompt_parts(Q, engine.config.system_prompt).suffix
    feats = torch.cat(mels, dim=-1)
    pixels, grid = preprocess_video(np.concatenate([w.frames for w in windows]), adapter.vision_cfg)
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = tiny25.thinker(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), input_features=feats,
            feature_attention_mask=torch.ones(1, feats.shape[-1], dtype=torch.long), pixel_values_videos=pixels,
            video_grid_thw=grid, video_second_per_grid=torch.tensor([1.0]), use_audio_in_video=True,
        )
    return out.logits[0, -1].float()


def test_streaming_identity_equals_stock_one_shot_forward(tiny25):
    engine = _engine(tiny25, video_max_pixels=None)  # the paper's pixel budget, as the processor
    wav, frames = synthetic_clip(8.0, seed=4)
    windows = clip_windows(wav, frames)
    for w in windows:
        engine.ingest(w)
    logits, _ = engine.question_logits(Q)
    ref = _stock_reference(engine, tiny25, windows)
    assert (logits - ref).abs().max().item() <= 1e-5


def _one_shot(engine: StreamEngine, question: str) -> torch.Tensor:
    """One forward over [prefix, every stored segment's kept tokens, question] at the stored positions."""
    adapter = engine.adapter
    parts = adapter.prompt_parts("", engine.config.system_prompt)
    prefix_ids = parts.prefix + adapter.open_ids(True, True)
    prefix = engine.cache.segments[0]
    embeds = [adapter.embed_ids(prefix_ids)]
    positions = [prefix.positions]
    for seg in engine.cache.segments[1:]:
        embeds.append(seg.embeds)
        positions.append(seg.positions)
    close_ids = adapter.close_ids(True, True)
    suffix = adapter.prompt_parts(question, engine.config.system_prompt).suffix
    close = adapter.special_positions(len(close_ids), engine.cache.close_position())
    tail = close + [close[-1] + 1 + i for i in range(len(suffix))]
    embeds.append(adapter.embed_ids(close_ids + suffix))
    positions.append(torch.tensor(tail).view(1, -1).expand(3, -1))
    return adapter.forward(torch.cat(embeds), torch.cat(positions, dim=1), adapter.new_cache())


def test_streaming_omnizip_equals_one_shot_prefill_of_kept_tokens(tiny25):
    engine = _engine(tiny25, method="omnizip", rho_audio=0.4, rho_video=0.7)
    wav, frames = synthetic_clip(12.0, seed=5)
    for w in clip_windows(wav, frames):
        engine.ingest(w)
    stats = engine.stats()
    assert stats["tokens_kept"] < stats["tokens_seen"]
    logits, _ = engine.question_logits(Q)
    assert (logits - _one_shot(engine, Q)).abs().max().item() <= 1e-5


def _check_caps(engine: StreamEngine) -> None:
    cache = engine.cache
    assert cache.stored_tokens + cache.reserve_tokens <= cache.max_tokens
    budget = int(engine.config.cache_max_mb * 2**20)
    assert cache.kv_bytes() + cache.store_bytes() + cache.reserve_tokens * (
        cache.kv_bytes_per_token + cache.store_bytes_per_token) <= budget


@pytest.mark.parametrize("cap", [dict(cache_max_tokens=700), dict(cache_max_mb=0.35)])
def test_eviction_keeps_sink_and_latest_windows_under_the_cap(tiny25, cap):
    engine = _engine(tiny25, sink_windows=1, **cap)
    wav, frames = synthetic_clip(40.0, seed=6)
    for w in clip_windows(wav, frames):
        engine.ingest(w)
        _check_caps(engine)
    kept = [s.window_index for s in engine.cache.windows()]
    assert kept[0] == 0, "the sink window must stay"
    assert kept[1:] == list(range(kept[1], 20)), "the most recent windows, contiguous, must remain"
    assert engine.cache.events.windows_evicted == 20 - len(kept) > 0
    # The cache's KV length matches the segments it records.
    assert engine.cache.cache.get_seq_length() == engine.cache.stored_tokens


def test_reanchoring_by_reprefill_equals_one_shot_at_reanchored_positions(tiny25):
    # max_positions is 32768 for the tiny model; reanchor_at 0.05 -> positions re-anchored past ~1638.
    engine = _engine(tiny25, method="omnizip", sink_windows=1, cache_max_tokens=900, reanchor_at=0.05)
    wav, frames = synthetic_clip(90.0, seed=7)
    checked = 0
    for w in clip_windows(wav, frames):
        before = engine.cache.events.reanchors
        engine.ingest(w)
        _check_caps(engine)
        assert engine.cache.max_position() + engine.config.query_reserve_tokens <= engine.cache.position_limit
        if engine.cache.events.reanchors > before:
            movable = [s for s in engine.cache.segments if s.movable]
            sink_end = max(float(s.positions.max()) for s in engine.cache.segments if not s.movable)
            assert float(movable[0].positions[0].min()) == sink_end + 1, "oldest retained window follows the sink"
            # Right after re-anchoring the cache is a one-shot prefill of the sink and the retained
            # windows at their new positions (the newest window was prefilled on top of it).
            logits, _ = engine.question_logits(Q)
            assert (logits - _one_shot(engine, Q)).abs().max().item() <= 1e-5
            checked += 1
    assert checked >= 1 and engine.cache.events.windows_evicted > 0


def test_rotate_keys_equals_keys_computed_at_the_new_positions(adapter25):
    # Layer-0 keys depend only on each token's embedding and position, so prefilling at old positions
    # and rotating must equal prefilling at the new ones; deltas differ per token and per row (video
    # tokens move on the temporal row only).
    n = 24
    probe = torch.randn(n, adapter25.spec.hidden_size)
    old = torch.arange(500, 500 + n).view(1, -1).repeat(3, 1)
    delta = torch.zeros(3, n, dtype=torch.long)
    delta[0] = -437
    delta[1:, ::2] = -437
    first, second = adapter25.new_cache(), adapter25.new_cache()
    adapter25.forward(probe, old, first, logits=False)
    adapter25.forward(probe, old + delta, second, logits=False)
    rotated = adapter25.rotate_keys(first.layers[0].keys, delta)
    assert (rotated - second.layers[0].keys).abs().max().item() <= 1e-5
    assert (first.layers[0].keys - second.layers[0].keys).abs().max().item() > 1e-2


def test_rerotate_and_reprefill_place_retained_windows_identically(tiny25):
    wav, frames = synthetic_clip(90.0, seed=8)
    engines = {}
    for policy in ("reprefill", "rerotate"):
        engine = _engine(tiny25, method="omnizip", sink_windows=1, cache_max_tokens=900, reanchor_at=0.05,
                         reanchor=policy)
        for w in clip_windows(wav, frames):
            engine.ingest(w)
            _check_caps(engine)
        assert engine.cache.events.reanchors >= 1
        engines[policy] = engine
    a, b = engines["reprefill"].cache, engines["rerotate"].cache
    assert [s.window_index for s in a.segments] == [s.window_index for s in b.segments]
    for sa, sb in zip(a.segments, b.segments, strict=True):
        assert torch.equal(sa.positions, sb.positions)
    # Same layer-0 keys (position-exact), different deeper states (rerotate keeps old contexts).
    assert (a.cache.layers[0].keys - b.cache.layers[0].keys).abs().max().item() <= 1e-4
    assert b.store_bytes() == 0 < a.store_bytes()


def test_query_leaves_the_cache_unchanged(tiny25):
    engine = _engine(tiny25, method="omnizip")
    wav, frames = synthetic_clip(6.0, seed=9)
    for w in clip_windows(wav, frames):
        engine.ingest(w)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in engine.cache.cache.layers]
    length = engine.cache.stored_tokens
    result = engine.answer(Q, 8)
    assert result.tokens and result.window_range == (0, 2) and result.time_range_s == (0.0, 6.0)
    assert engine.cache.stored_tokens == length == engine.cache.cache.get_seq_length()
    for (k, v), layer in zip(before, engine.cache.cache.layers, strict=True):
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values)
    # Answering twice gives the same answer: nothing of the first query leaked into the stream.
    assert engine.answer(Q, 8).tokens == result.tokens


def test_question_errors(tiny25):
    engine = _engine(tiny25)
    wav, frames = synthetic_clip(2.0)
    engine.ingest(clip_windows(wav, frames)[0])
    with pytest.raises(QueryError) as err:
        engine.answer("why " * 200, 4)
    assert err.value.code == "too_long"
    with pytest.raises(QueryError) as err:
        engine.answer("   ", 4)
    assert err.value.code == "bad_request"


def test_cache_too_small_for_the_reserve_is_a_clear_error(tiny25):
    with pytest.raises(CacheFullError, match="reserved for a query"):
        _engine(tiny25, cache_max_tokens=40)


def test_missing_modalities_and_jittered_frames(tiny25):
    engine = _engine(tiny25, method="omnizip")
    wav, frames = synthetic_clip(6.0, seed=10)
    w0, w1, w2 = clip_windows(wav, frames)
    # mic lost: a video-only window; camera lost: an audio-only window; jitter: 5 frames at odd times.
    engine.ingest(w0)
    engine.ingest(Window(w1.t0_s, np.zeros(0, np.float32), w1.frames, w1.frame_pts_s, duration_s=2.0))
    jitter = Window(w2.t0_s, w2.audio, np.concatenate([w2.frames, w2.frames[:1]]),
                    w2.t0_s + np.array([0.0, 0.4, 1.1, 1.45, 1.9]))
    with pytest.raises(ValueError, match="not on the model's grid.*on_grid"):
        engine.ingest(jitter)  # the engine takes windows as they are: a hand-made one goes through on_grid
    engine.ingest(on_grid(jitter, engine.adapter.spec.fps, 2.0))
    engine.ingest(Window(6.0, wav[:32000], np.zeros((0, 0, 0, 3), np.uint8), np.zeros(0), duration_s=2.0))
    assert engine.windows_ingested == 4
    assert engine.answer(Q, 4).window_range == (0, 3)


@pytest.mark.timeout(900)
def test_two_hour_stream_stays_within_positions_and_memory(tiny25):
    """2 hours of stream time, accelerated: 8-s windows, 1 video token per frame, real audio."""
    engine = _engine(tiny25, method="omnizip", window_s=8.0, video_max_pixels=28 * 28, cache_max_tokens=3000,
                     cache_max_mb=1.0)
    rng = np.random.default_rng(11)
    t = np.arange(8 * 16000) / 16000
    tone = (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    frame = np.zeros((16, 28, 28, 3), np.uint8)
    limit = engine.adapter.spec.max_positions
    budget = int(engine.config.cache_max_mb * 2**20)
    for i in range(900):  # 900 x 8 s = 2 h
        audio = tone + (0.02 * rng.standard_normal(tone.size)).astype(np.float32)
        frames = frame + np.uint8(i % 200)
        engine.ingest(Window(8.0 * i, audio, frames, 8.0 * i + np.arange(16) / 2.0))
        assert engine.cache.max_position() < limit
        assert engine.cache.kv_bytes() + engine.cache.store_bytes() <= budget
    stats = engine.stats()
    assert stats["windows_ingested"] == 900 and stats["windows_evicted"] > 800
    assert stats["reanchors"] >= 1
    assert stats["max_position"] + engine.config.query_reserve_tokens <= engine.config.reanchor_at * limit
    answer = engine.answer(Q, 4)
    assert answer.window_range is not None and answer.window_range[1] == 899
    assert answer.time_range_s is not None and answer.time_range_s[1] == 7200.0
    # What the answer saw: the sink and the recent run, not "windows 0-899".
    assert answer.spans["sink_window_range"] == (0, 0) and answer.spans["sink_time_range_s"] == (0.0, 8.0)
    assert answer.spans["recent_window_range"] == (stats["windows_evicted"] + 1, 899)
    assert answer.spans["windows_cached"] == 900 - stats["windows_evicted"]


def _one_shot_any(engine: StreamEngine, question: str) -> torch.Tensor:
    """Like ``_one_shot`` for any family: float positions and deepstack extras concatenated (Qwen3)."""
    adapter = engine.adapter
    parts = adapter.prompt_parts("", engine.config.system_prompt)
    embeds = [adapter.embed_ids(parts.prefix + adapter.open_ids(True, True))]
    positions = [engine.cache.segments[0].positions]
    masks = [torch.zeros(embeds[0].shape[0], dtype=torch.bool)]
    levels: list[list[torch.Tensor]] = []
    for seg in engine.cache.segments[1:]:
        embeds.append(seg.embeds)
        positions.append(seg.positions)
        if seg.extras:
            masks.append(seg.extras["video_mask"])
            for i, level in enumerate(seg.extras["deepstack"]):
                if len(levels) <= i:
                    levels.append([])
                levels[i].append(level)
        else:
            masks.append(torch.zeros(seg.length, dtype=torch.bool))
    close_ids = adapter.close_ids(True, True)
    suffix = adapter.prompt_parts(question, engine.config.system_prompt).suffix
    close = adapter.special_positions(len(close_ids), engine.cache.close_position())
    tail = close + [close[-1] + 1 + i for i in range(len(suffix))]
    embeds.append(adapter.embed_ids(close_ids + suffix))
    positions.append(torch.tensor(tail, dtype=adapter.position_dtype).view(1, -1).expand(3, -1))
    masks.append(torch.zeros(len(tail), dtype=torch.bool))
    extras = {"video_mask": torch.cat(masks), "deepstack": [torch.cat(lv) for lv in levels]} if levels else None
    return adapter.forward(torch.cat(embeds), torch.cat(positions, dim=1), adapter.new_cache(), extras=extras)


def test_qwen3_stream_with_eviction_and_reanchoring_equals_one_shot(tiny3):
    adapter = make_adapter(tiny3, video_max_pixels=64 * 64)
    cfg = StreamConfig(model="tiny-qwen3", method="omnizip", window_s=8.0, max_new_tokens=8, max_question_tokens=32,
                       cache_max_tokens=700, reanchor_at=0.05, sink_windows=1)
    engine = StreamEngine(adapter, cfg)
    assert engine.adapter.position_dtype == torch.float32
    wav, frames = synthetic_clip(200.0, seed=12, size=(64, 64))  # 2600 temporal ids > 5% of 32768
    checked = 0
    for w in clip_windows(wav, frames, window_s=8.0):
        before = engine.cache.events.reanchors
        engine.ingest(w)
        _check_caps(engine)
        if engine.cache.events.reanchors > before:
            logits, _ = engine.question_logits(Q)
            assert (logits - _one_shot_any(engine, Q)).abs().max().item() <= 1e-5
            checked += 1
    assert checked >= 1 and engine.cache.events.windows_evicted > 0
    assert any(s.extras for s in engine.cache.segments[1:]), "deepstack must travel with the kept video"
    assert engine.answer(Q, 4).window_range[1] == 24


def test_a_question_before_any_window_is_not_ready(tiny25):
    engine = _engine(tiny25)
    with pytest.raises(QueryError) as err:
        engine.answer(Q, 4)
    assert err.value.code == "not_ready"

