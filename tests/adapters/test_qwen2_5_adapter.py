"""Qwen2.5-Omni adapter against the stock transformers thinker (fp32, tiny random weights)."""

from __future__ import annotations

import pytest
import torch

from omnizip import OmniZipConfig, make_compressor
from omnizip.adapters.base import AVCursor
from omnizip.adapters.capture import QKCapture
from omnizip.adapters.generation import greedy_decode
from omnizip.plan import gather_kept
from omnizip.qa import ContextTooLongError, answer_clip, prepare_clip_prompt
from omnizip.testing import reference_inputs

from .conftest import make_adapter, synthetic_clip

QUESTION = "What is happening?"
CLIPS = [
    pytest.param(6.0, True, True, id="3-windows"),
    pytest.param(2.0, True, True, id="1-window"),
    pytest.param(5.3, True, True, id="odd-length"),
    pytest.param(4.0, False, True, id="video-without-audio"),
    pytest.param(3.1, True, False, id="audio-only"),
]


def _stock(bundle, wav, frames):
    ref = reference_inputs(bundle, frames=frames, audio=wav, question=QUESTION)
    with torch.no_grad():
        logits = bundle.thinker(**ref).logits[0, -1].float()
    core = bundle.thinker.model
    seqlens = ref["feature_attention_mask"].sum(-1) if "feature_attention_mask" in ref else None
    pos, delta = core.get_rope_index(
        ref["input_ids"], None, ref.get("video_grid_thw"), ref["attention_mask"],
        bool(ref.get("use_audio_in_video", False)), seqlens, ref.get("video_second_per_grid"),
    )
    return ref, logits, pos[:, 0], int(delta)


@pytest.mark.parametrize("seconds,audio,video", CLIPS)
def test_identity_prefill_equals_stock_forward(adapter25, tiny25, seconds, audio, video):
    wav, frames = synthetic_clip(seconds, audio=audio, video=video)
    prompt = prepare_clip_prompt(adapter25, wav, frames, QUESTION, make_compressor("identity"))
    ref, stock_logits, stock_pos, delta = _stock(tiny25, wav, frames)
    assert prompt.embeds.shape[0] == ref["input_ids"].shape[1]
    assert torch.equal(prompt.positions, stock_pos), "positions differ from the stock get_rope_index"
    ours = adapter25.forward(prompt.embeds, prompt.positions, adapter25.new_cache())
    assert (ours - stock_logits).abs().max().item() <= 1e-5
    # Decoding continues where the uncompressed model would: L + rope_delta.
    assert prompt.next_position == ref["input_ids"].shape[1] + delta


def test_kept_tokens_keep_stock_position_ids(adapter25, tiny25):
    wav, frames = synthetic_clip(8.0, seed=1)
    _, _, stock_pos, _ = _stock(tiny25, wav, frames)
    parts = adapter25.prompt_parts(QUESTION)
    n_open = len(adapter25.open_ids(True, True))
    base = len(parts.prefix) + 1  # the two opening tokens share one position
    encoded = adapter25.encode_av(wav, frames, AVCursor(base=base), saliency="global")
    plan = make_compressor("omnizip", OmniZipConfig(rho_audio=0.4, rho_video=0.7)).plan(encoded.layout)
    _, kept_pos, kept_index = gather_kept(encoded.layout, plan)
    assert 0 < kept_index.numel() < encoded.layout.num_tokens
    offset = len(parts.prefix) + n_open
    assert torch.equal(kept_pos, stock_pos[:, offset + kept_index])


def test_adapter_plan_equals_the_reference_entry_point_on_the_stock_sequence(adapter25, tiny25):
    """The adapter reads chunks and frames exactly as ``compress_sequence`` reads the processor's ids."""
    from omnizip import compress_sequence

    wav, frames = synthetic_clip(8.0, seed=5)
    ref = reference_inputs(tiny25, frames=frames, audio=wav, question=QUESTION)
    ids = ref["input_ids"][0]
    parts = adapter25.prompt_parts(QUESTION)
    encoded = adapter25.encode_av(wav, frames, AVCursor(base=len(parts.prefix) + 1), saliency="global")
    offset = len(parts.prefix) + 2
    n = encoded.layout.num_tokens
    assert torch.equal(ids[offset:offset + n], encoded.token_ids)
    embeds = torch.zeros(ids.shape[0], encoded.layout.embeds.shape[1])
    embeds[offset:offset + n] = encoded.layout.embeds
    config = OmniZipConfig(rho_audio=0.4, rho_video=0.7)
    _, keep = compress_sequence(embeds, ids, encoded.layout.audio_saliency, audio_token_id=tiny25.config.audio_token_id,
                                video_token_id=tiny25.config.video_token_id,
                                video_grid_thw=ref["video_grid_thw"], config=config)
    plan = make_compressor("omnizip", config).plan(encoded.layout)
    assert torch.equal(keep[offset:offset + n], plan.keep)


def test_saliency_capture_leaves_outputs_unchanged(adapter25, tiny25):
    wav, _ = synthetic_clip(4.0, video=False)
    from omnizip.preprocess import log_mel

    feats, mask = log_mel(wav, adapter25.audio_cfg)
    core = tiny25.thinker.model
    with torch.no_grad():
        plain = core.get_audio_features(feats, feature_attention_mask=mask).last_hidden_state
        with QKCapture(core.audio_tower.layers[-1].self_attn) as cap:
            hooked = core.get_audio_features(feats, feature_attention_mask=mask).last_hidden_state
    assert torch.equal(plain, hooked)
    assert cap.q is not None and cap.q.shape[0] == 2 * plain.shape[0]
    assert cap.block_lengths() == [100, 100]  # the encoder's 2-s attention blocks
    # Hooks are removed on exit: a later call records nothing.
    cap.q = None
    with torch.no_grad():
        core.get_audio_features(feats, feature_attention_mask=mask)
    assert cap.q is None


@pytest.mark.parametrize("variant", ["global", "block"])
def test_encode_av_gives_one_saliency_per_audio_token(adapter25, variant):
    wav, frames = synthetic_clip(5.0)
    enc = adapter25.encode_av(wav, frames, AVCursor(base=10), saliency=variant)
    n_audio = int((enc.layout.modality == 1).sum())
    assert enc.layout.audio_saliency is not None and enc.layout.audio_saliency.shape == (n_audio,)
    assert torch.isfinite(enc.layout.audio_saliency).all() and (enc.layout.audio_saliency > 0).all()


def test_adapter_greedy_equals_hf_generate_on_pruned_inputs(adapter25, tiny25):
    wav, frames = synthetic_clip(6.0, seed=2)
    comp = make_compressor("omnizip", OmniZipConfig(rho_audio=0.4, rho_video=0.7))
    prompt = prepare_clip_prompt(adapter25, wav, frames, QUESTION, comp)
    cache = adapter25.new_cache()
    logits = adapter25.forward(prompt.embeds, prompt.positions, cache)
    ours = greedy_decode(adapter25, cache, logits, prompt.next_position, max_new_tokens=8, stop_ids=set())
    with torch.no_grad():
        hf = tiny25.thinker.generate(
            inputs_embeds=prompt.embeds[None], position_ids=prompt.positions[:, None],
            attention_mask=torch.ones(1, prompt.embeds.shape[0], dtype=torch.long),
            max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0,
        )
    assert ours.token_ids == hf[0, -8:].tolist()


def test_answer_clip_reports_token_accounting(adapter25):
    wav, frames = synthetic_clip(6.0, seed=3)
    full = answer_clip(adapter25, wav, frames, QUESTION, make_compressor("identity"), max_new_tokens=4)
    zipped = answer_clip(adapter25, wav, frames, QUESTION,
                         make_compressor("omnizip", OmniZipConfig(rho_audio=0.4, rho_video=0.7)), max_new_tokens=4)
    assert full.tokens_kept == full.tokens_total
    assert full.audio_tokens_total == 150 and full.video_tokens_total == 6 * 144  # 6 grids of 12x12 (112 px upscaled to the pixel budget)
    assert zipped.tokens_total == full.tokens_total
    assert zipped.video_tokens_kept < zipped.video_tokens_total
    assert zipped.audio_tokens_kept < zipped.audio_tokens_total
    text_tokens = full.tokens_total - full.audio_tokens_total - full.video_tokens_total
    assert zipped.tokens_kept == zipped.audio_tokens_kept + zipped.video_tokens_kept + text_tokens
    assert zipped.prefill_ms > 0 and zipped.method == "omnizip"


def test_context_too_long_is_a_clear_error(tiny25):
    adapter = make_adapter(tiny25)
    wav, frames = synthetic_clip(2.0)
    long_question = "word " * 40000
    with pytest.raises(ContextTooLongError, match="positions up to"):
        prepare_clip_prompt(adapter, wav, frames, long_question, make_compressor("identity"))


@pytest.mark.parametrize("name", ["adapter25", "adapter3"])
def test_forward_uses_the_text_models_current_cache_argument(request, name):
    """No deprecated ``past_key_values`` (a FutureWarning on every stream's screen, removed in transformers
    5.40), and the cache is still filled."""
    import warnings

    adapter = request.getfixturevalue(name)
    ids = adapter.text_ids("hello there")
    cache = adapter.new_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        adapter.forward(adapter.embed_ids(ids), adapter.positions_1d([float(i) for i in range(len(ids))]), cache)
    assert cache.get_seq_length() == len(ids)
