"""Qwen3-Omni adapter against the stock transformers thinker (fp32, tiny random weights)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omni_helpers import make_adapter, synthetic_clip
from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import Qwen3OmniMoeProcessor

from omnizip import OmniZipConfig, make_compressor
from omnizip.adapters.base import AVCursor
from omnizip.adapters.capture import QKCapture
from omnizip.adapters.generation import greedy_decode
from omnizip.adapters.tmrope import AUDIO_KIND, qwen3_av_tokens
from omnizip.plan import gather_kept
from omnizip.preprocess import audio_token_count, log_mel, log_mel_window
from omnizip.qa import ContextTooLongError, answer_clip, prepare_clip_prompt
from omnizip.testing import SPECIAL_IDS, reference_inputs

QUESTION = "What is happening?"
CLIPS = [
    pytest.param(6.0, True, True, id="several-windows"),
    pytest.param(2.0, True, True, id="1-window"),
    pytest.param(5.3, True, True, id="odd-length"),
    pytest.param(4.0, False, True, id="video-without-audio"),
    pytest.param(3.1, True, False, id="audio-only"),
]


def _rope_index(bundle, ref):
    seqlens = ref["feature_attention_mask"].sum(-1) if "feature_attention_mask" in ref else None
    pos, delta = bundle.thinker.model.get_rope_index(
        ref["input_ids"], None, ref.get("video_grid_thw"), ref["attention_mask"],
        bool(ref.get("use_audio_in_video", False)), seqlens, ref.get("video_second_per_grid"),
    )
    return pos[:, 0], float(delta)


def _stock(bundle, wav, frames):
    ref = reference_inputs(bundle, frames=frames, audio=wav, question=QUESTION)
    with torch.no_grad():
        logits = bundle.thinker(**ref).logits[0, -1].float()
    pos, delta = _rope_index(bundle, ref)
    return ref, logits, pos, delta


def test_spec_matches_the_qwen3_model(adapter3):
    spec = adapter3.spec
    assert spec.family == "qwen3_omni"
    assert spec.position_id_per_seconds == 13 and spec.audio_tokens_per_s == 13
    assert spec.exact_window_s == 8.0  # n_window_infer = 800 mel frames
    assert spec.second_per_grid == 1.0 and spec.seconds_per_chunk == 1.0
    assert adapter3.position_dtype == torch.float32 and not adapter3.shared_special_positions
    assert adapter3.special_positions(2, 7) == [7, 8]


@pytest.mark.parametrize("seconds,audio,video", CLIPS)
def test_identity_prefill_equals_stock_forward(adapter3, tiny3, seconds, audio, video):
    wav, frames = synthetic_clip(seconds, audio=audio, video=video)
    prompt = prepare_clip_prompt(adapter3, wav, frames, QUESTION, make_compressor("identity"))
    ref, stock_logits, stock_pos, delta = _stock(tiny3, wav, frames)
    assert prompt.embeds.shape[0] == ref["input_ids"].shape[1]
    assert prompt.positions.dtype == torch.float32
    assert torch.equal(prompt.positions, stock_pos), "positions differ from the stock get_rope_index"
    assert (prompt.extras is not None) == video  # deepstack inputs exactly when there is video
    ours = adapter3.forward(prompt.embeds, prompt.positions, adapter3.new_cache(), extras=prompt.extras)
    assert (ours - stock_logits).abs().max().item() <= 1e-5
    assert prompt.next_position == ref["input_ids"].shape[1] + delta


def test_av_extras_mark_exactly_the_video_tokens(adapter3, tiny3):
    wav, frames = synthetic_clip(3.0, seed=4)
    prompt = prepare_clip_prompt(adapter3, wav, frames, QUESTION, make_compressor("identity"))
    ref = reference_inputs(tiny3, frames=frames, audio=wav, question=QUESTION)
    assert torch.equal(prompt.extras["video_mask"], ref["input_ids"][0] == SPECIAL_IDS["video_token"])
    with torch.no_grad():
        stock = tiny3.thinker.model.get_video_features(ref["pixel_values_videos"], ref["video_grid_thw"])
    for ours, level in zip(prompt.extras["deepstack"], stock.deepstack_features, strict=True):
        assert torch.equal(ours, torch.cat(list(level)))


def test_skipping_deepstack_changes_the_logits(adapter3):
    wav, frames = synthetic_clip(3.0, seed=5)
    prompt = prepare_clip_prompt(adapter3, wav, frames, QUESTION, make_compressor("identity"))
    with_ds = adapter3.forward(prompt.embeds, prompt.positions, adapter3.new_cache(), extras=prompt.extras)
    without = adapter3.forward(prompt.embeds, prompt.positions, adapter3.new_cache(), extras=None)
    assert (with_ds - without).abs().max().item() > 1e-3


def test_kept_tokens_keep_stock_position_ids(adapter3, tiny3):
    wav, frames = synthetic_clip(8.0, seed=1)
    _, _, stock_pos, _ = _stock(tiny3, wav, frames)
    parts = adapter3.prompt_parts(QUESTION)
    n_open = len(adapter3.open_ids(True, True))
    base = len(parts.prefix) + n_open  # Qwen3: the two opening tokens have consecutive positions
    encoded = adapter3.encode_av(wav, frames, AVCursor(base=base), saliency="global")
    plan = make_compressor("omnizip", OmniZipConfig(rho_audio=0.4, rho_video=0.7)).plan(encoded.layout)
    _, kept_pos, kept_index = gather_kept(encoded.layout, plan)
    assert 0 < kept_index.numel() < encoded.layout.num_tokens
    offset = len(parts.prefix) + n_open
    assert torch.equal(kept_pos, stock_pos[:, offset + kept_index])


def test_saliency_capture_leaves_outputs_unchanged(adapter3, tiny3):
    wav, _ = synthetic_clip(10.0, video=False)
    feats, mask = log_mel(wav, adapter3.audio_cfg)
    core = tiny3.thinker.model
    with torch.no_grad():
        plain = core.get_audio_features(feats, feature_attention_mask=mask).last_hidden_state
        with QKCapture(core.audio_tower.layers[-1].self_attn) as cap:
            hooked = core.get_audio_features(feats, feature_attention_mask=mask).last_hidden_state
    assert torch.equal(plain, hooked)
    # No pooling after the encoder: its last layer runs on exactly the LLM audio tokens (13 per second).
    assert plain.shape[0] == 130 and cap.q is not None and cap.q.shape[0] == plain.shape[0]
    assert cap.block_lengths() == [104, 26]  # 8-s attention windows (n_window_infer = 800 mel frames)
    cap.q = None
    with torch.no_grad():
        core.get_audio_features(feats, feature_attention_mask=mask)
    assert cap.q is None  # hooks are removed on exit


@pytest.mark.parametrize("variant", ["global", "block"])
def test_encode_av_gives_one_saliency_per_audio_token(adapter3, variant):
    wav, frames = synthetic_clip(9.0)
    enc = adapter3.encode_av(wav, frames, AVCursor(base=10), saliency=variant)
    n_audio = int((enc.layout.modality == 1).sum())
    assert n_audio == 9 * 13
    sal = enc.layout.audio_saliency
    assert sal is not None and sal.shape == (n_audio,)
    assert torch.isfinite(sal).all() and (sal > 0).all()
    # Each softmax block's saliencies sum to 1: the whole clip (global) or each 8-s window (block).
    expected = 1.0 if variant == "global" else 2.0
    assert sal.sum().item() == pytest.approx(expected, abs=1e-4)


def _hf_video_route(adapter, prompt):
    """Stock generate inputs for a pruned prompt: video slots hold the placeholder embedding and the
    kept video features (+ their deepstack levels) go in through ``mm_encoder_outputs``."""
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
        BaseModelOutputWithDeepstackFeatures,
    )

    mask = prompt.extras["video_mask"]
    embeds = prompt.embeds.clone()
    embeds[mask] = adapter.embed_ids([SPECIAL_IDS["video_token"]]).expand(int(mask.sum()), -1)
    video = BaseModelOutputWithDeepstackFeatures(
        pooler_output=(prompt.embeds[mask],), deepstack_features=[(lvl,) for lvl in prompt.extras["deepstack"]]
    )
    return embeds, {"video": video}


def test_adapter_greedy_equals_hf_generate_on_pruned_inputs(adapter3, tiny3):
    wav, frames = synthetic_clip(6.0, seed=2)
    comp = make_compressor("omnizip", OmniZipConfig(rho_audio=0.4, rho_video=0.7))
    prompt = prepare_clip_prompt(adapter3, wav, frames, QUESTION, comp)
    assert prompt.accounting["tokens_kept"] < prompt.accounting["tokens_total"]
    assert 0 < int(prompt.extras["video_mask"].sum()) < prompt.accounting["video_tokens_total"]
    cache = adapter3.new_cache()
    logits = adapter3.forward(prompt.embeds, prompt.positions, cache, extras=prompt.extras)
    ours = greedy_decode(adapter3, cache, logits, prompt.next_position, max_new_tokens=8, stop_ids=set())
    embeds, mm = _hf_video_route(adapter3, prompt)
    with torch.no_grad():
        hf = tiny3.thinker.generate(
            inputs_embeds=embeds[None], position_ids=prompt.positions[:, None], mm_encoder_outputs=mm,
            attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long), max_new_tokens=8,
            do_sample=False, eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True,
        )
    assert ours.token_ids == hf.sequences[0, -8:].tolist()
    assert (hf.logits[0][0].float() - logits).abs().max().item() <= 1e-5


def test_streaming_windows_equal_one_shot_forward_on_the_same_mels(adapter3, tiny3):
    """Two 8-s windows encoded with ``stream=True`` and prefilled one by one into one cache equal the
    stock one-shot forward whose log-mel is the concatenation of the per-window log-mels."""
    wav, frames = synthetic_clip(16.0, seed=6)
    ad, window = adapter3, 8 * 16000
    parts = ad.prompt_parts(QUESTION)
    open_ids, close_ids = ad.open_ids(True, True), ad.close_ids(True, True)
    p_open = len(parts.prefix)
    open_pos = ad.special_positions(len(open_ids), p_open)
    cursor = AVCursor(base=open_pos[-1] + 1)
    encoded, mels = [], []
    for k in range(2):
        audio, clip_frames = wav[k * window:(k + 1) * window], frames[k * 16:(k + 1) * 16]
        mels.append(log_mel_window(audio, cursor.audio_tail, running_max_log10=cursor.mel_max_log10,
                                   cfg=ad.audio_cfg).input_features)
        enc = ad.encode_av(audio, clip_frames, cursor, saliency="block", stream=True)
        encoded.append(enc)
        cursor = enc.next_cursor
    assert cursor.audio_tokens == 2 * 104 and cursor.grids == 16

    def pos(values):
        return torch.tensor(values, dtype=torch.float32).view(1, -1).expand(3, -1)

    cache = ad.new_cache()
    first, second = encoded
    head = torch.cat([ad.embed_ids(parts.prefix + open_ids), first.layout.embeds])
    head_pos = torch.cat([pos(list(range(p_open)) + open_pos), first.layout.positions], dim=1)
    all_first = torch.arange(first.layout.num_tokens)
    extras = ad.av_extras(first, all_first, offset=p_open + len(open_ids), total=head.shape[0])
    assert ad.forward(head, head_pos, cache, extras=extras, logits=False) is None
    close_pos = ad.special_positions(len(close_ids), second.close_position)
    suffix_pos = [close_pos[-1] + 1 + i for i in range(len(parts.suffix))]
    tail = torch.cat([second.layout.embeds, ad.embed_ids(close_ids + parts.suffix)])
    tail_pos = torch.cat([second.layout.positions, pos(close_pos + suffix_pos)], dim=1)
    extras = ad.av_extras(second, torch.arange(second.layout.num_tokens), offset=0, total=tail.shape[0])
    streamed = ad.forward(tail, tail_pos, cache, extras=extras)

    ref = reference_inputs(tiny3, frames=frames, audio=wav, question=QUESTION)
    ref["input_features"] = torch.cat(mels, dim=-1)
    assert ref["input_features"].shape == (1, 128, ref["feature_attention_mask"].shape[1])
    stock_pos, _ = _rope_index(tiny3, ref)
    assert torch.equal(torch.cat([head_pos, tail_pos], dim=1), stock_pos)
    with torch.no_grad():
        stock = tiny3.thinker(**ref).logits[0, -1].float()
    assert (streamed - stock).abs().max().item() <= 1e-5


def test_answer_clip_reports_token_accounting(adapter3):
    wav, frames = synthetic_clip(6.0, seed=3)
    full = answer_clip(adapter3, wav, frames, QUESTION, make_compressor("identity"), max_new_tokens=4)
    zipped = answer_clip(adapter3, wav, frames, QUESTION,
                         make_compressor("omnizip", OmniZipConfig(rho_audio=0.4, rho_video=0.7)), max_new_tokens=4)
    h, w = adapter3.vision_cfg.resized_size(*frames.shape[1:3])
    per_grid = (h // 32) * (w // 32)
    assert full.tokens_kept == full.tokens_total
    assert full.audio_tokens_total == 6 * 13 and full.video_tokens_total == 6 * per_grid  # 12 frames = 6 grids
    assert zipped.tokens_total == full.tokens_total
    assert zipped.video_tokens_kept < zipped.video_tokens_total
    assert zipped.audio_tokens_kept < zipped.audio_tokens_total
    text_tokens = full.tokens_total - full.audio_tokens_total - full.video_tokens_total
    assert zipped.tokens_kept == zipped.audio_tokens_kept + zipped.video_tokens_kept + text_tokens
    assert zipped.prefill_ms > 0 and zipped.method == "omnizip"


def test_rotate_keys_moves_keys_to_new_positions(adapter3):
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import apply_rotary_pos_emb

    rotary = adapter3.thinker.model.language_model.rotary_emb
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(1, 2, 5, 16, generator=gen)
    old = torch.tensor([[3.0, 4, 17, 30, 31], [3, 4, 5, 6, 40], [3, 4, 9, 2, 41]])
    delta = torch.tensor([[-2.0, 5, 0, 13, -1], [1, 0, 2, 13, -1], [0, 0, 7, 13.5, -1]])

    def rope(k, p):
        cos, sin = rotary(k, p.view(3, 1, -1))
        return apply_rotary_pos_emb(k, k, cos, sin)[1]

    moved = adapter3.rotate_keys(rope(keys, old), delta)
    assert (moved - rope(keys, old + delta)).abs().max().item() <= 1e-5


def test_context_too_long_is_a_clear_error(tiny3):
    adapter = make_adapter(tiny3)
    wav, frames = synthetic_clip(2.0)
    with pytest.raises(ContextTooLongError, match="positions up to"):
        prepare_clip_prompt(adapter, wav, frames, "word " * 40000, make_compressor("identity"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_mel=st.integers(30, 1700),
    grid=st.tuples(st.integers(1, 9), st.sampled_from([2, 4, 6]), st.sampled_from([2, 4])),
    second_per_grid=st.sampled_from([1.0, 0.5, 2.0, 2 / 1.37, 2 / 3]),
    prefix=st.integers(0, 5),
)
def test_qwen3_av_tokens_equal_stock_rope_index(tiny3, n_mel, grid, second_per_grid, prefix):
    """Order and ids of interleaved blocks equal the stock ``get_rope_index`` (including ties of
    fractional video ids with audio ids, e.g. 6.5 vs 6 at 0.5 s per grid)."""
    n_audio = audio_token_count(n_mel, "qwen3_omni", n_window=50)
    base = prefix + 2
    toks = qwen3_av_tokens(n_audio, grid, base=base, second_per_grid=second_per_grid)
    audio_id, video_id = SPECIAL_IDS["audio_token"], SPECIAL_IDS["video_token"]
    block = torch.where(toks.kind == AUDIO_KIND, audio_id, video_id).tolist()
    ids = ([0] * prefix + [SPECIAL_IDS["vision_bos_token"], SPECIAL_IDS["audio_bos_token"]] + block
           + [SPECIAL_IDS["audio_eos_token"], SPECIAL_IDS["vision_eos_token"], 1, 2])
    ids_t = torch.tensor([ids])
    pos, _ = tiny3.thinker.model.get_rope_index(
        ids_t, None, torch.tensor([list(grid)]), torch.ones_like(ids_t), True, torch.tensor([n_mel]),
        torch.tensor([second_per_grid]),
    )
    assert torch.equal(toks.positions, pos[:, 0, base:base + len(block)])
    stock_close = pos[0, 0, base + len(block)].item()
    assert toks.close_position == stock_close
    # The processor's own placement of the placeholders agrees with that order.
    stand_in = SimpleNamespace(audio_bos_token="<", audio_eos_token=">", audio_token="a", video_token="v",
                               video_processor=SimpleNamespace(merge_size=2))
    placeholder = Qwen3OmniMoeProcessor.replace_video_with_audio_token(
        stand_in, {"video_grid_thw": np.array([grid]), "video_second_per_grid": [second_per_grid]}, 0,
        {"num_audio_tokens": np.array([n_audio])}, 0, position_id_per_seconds=13,
    )
    assert placeholder == "<" + "".join("a" if k == audio_id else "v" for k in block) + ">"


def test_video_only_at_fractional_fps_continues_at_stock_positions(adapter3, tiny3):
    _, frames = synthetic_clip(4.0, audio=False)
    fps = 1.37  # frames capped: grid steps at 2 / 1.37 s, temporal ids 18.98 apart
    prompt = prepare_clip_prompt(adapter3, None, frames, QUESTION, make_compressor("identity"), video_fps=fps)
    ref = reference_inputs(tiny3, frames=frames, question=QUESTION)
    ref["video_second_per_grid"] = torch.tensor([2 / fps])
    stock_pos, _ = _rope_index(tiny3, ref)
    assert torch.equal(prompt.positions, stock_pos)
