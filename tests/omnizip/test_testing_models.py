"""omnizip.testing: random-weight thinkers and the offline tokenizer."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen3OmniMoeThinkerForConditionalGeneration,
)

from omnizip.preprocess import VisionPreprocessConfig
from omnizip.testing import (
    SPECIAL_IDS,
    TOKEN_STRINGS,
    TinyOmni,
    build_tokenizer,
    reference_inputs,
    small_qwen2_5_omni_config,
    tiny_qwen2_5_omni,
    tiny_qwen3_omni,
)

BUILDERS = {"qwen2_5_omni": tiny_qwen2_5_omni, "qwen3_omni": tiny_qwen3_omni}
CLASSES = {"qwen2_5_omni": Qwen2_5OmniThinkerForConditionalGeneration,
           "qwen3_omni": Qwen3OmniMoeThinkerForConditionalGeneration}


@pytest.fixture(scope="module", params=list(BUILDERS))
def bundle(request: pytest.FixtureRequest) -> TinyOmni:
    return BUILDERS[request.param](seed=0)


def _clip(seconds: float, fps: float = 2.0, size: tuple[int, int] = (120, 160), seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (int(seconds * fps), *size, 3), dtype=np.uint8)
    t = np.arange(int(seconds * 16000)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.shape[0])).astype(np.float32)
    return frames, audio


@pytest.mark.parametrize("family", list(BUILDERS))
def test_builds_offline_in_eval_fp32_sdpa(family: str) -> None:
    t0 = time.perf_counter()
    b = BUILDERS[family]()
    print(f"\n{family}: built in {1000 * (time.perf_counter() - t0):.0f} ms")  # reported, not asserted
    assert isinstance(b.thinker, CLASSES[family]) and b.family == family and b.config is b.thinker.config
    assert not b.thinker.training
    assert {p.dtype for p in b.thinker.parameters()} == {torch.float32}
    impls = {m.config._attn_implementation for m in b.thinker.modules() if hasattr(m, "config")}
    assert impls == {"sdpa"}
    assert b.config.get_text_config().vocab_size == len(b.tokenizer) == 1024
    assert sum(p.numel() for p in b.thinker.parameters()) < 1_000_000
    assert b.config.position_id_per_seconds == (25 if family == "qwen2_5_omni" else 13)
    with pytest.raises(AttributeError):
        b.family = "x"  # type: ignore[misc]


@pytest.mark.parametrize("family", list(BUILDERS))
def test_weights_are_deterministic_by_seed_and_leave_global_rng_alone(family: str) -> None:
    state = torch.random.get_rng_state()
    a, b, c = BUILDERS[family](seed=0), BUILDERS[family](seed=0), BUILDERS[family](seed=1)
    assert torch.equal(state, torch.random.get_rng_state())
    sa, sb, sc = a.thinker.state_dict(), b.thinker.state_dict(), c.thinker.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_special_ids_match_config(bundle: TinyOmni) -> None:
    tok, cfg = bundle.tokenizer, bundle.config
    pairs = {
        "audio_token": cfg.audio_token_id, "video_token": cfg.video_token_id, "image_token": cfg.image_token_id,
        "audio_bos_token": cfg.audio_start_token_id, "vision_bos_token": cfg.vision_start_token_id,
        "vision_eos_token": cfg.vision_end_token_id,
    }
    if bundle.family == "qwen2_5_omni":
        pairs["audio_eos_token"] = cfg.audio_end_token_id
    for name, config_id in pairs.items():
        token = getattr(tok, name)
        assert token == TOKEN_STRINGS[bundle.family][name]
        assert getattr(tok, f"{name}_id") == config_id == SPECIAL_IDS[name]
        assert tok.encode(token) == [config_id]
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == SPECIAL_IDS["im_end"]
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == SPECIAL_IDS["pad_token"]
    assert tok.encode("<|im_start|>") == [SPECIAL_IDS["im_start"]]
    assert bundle.thinker.generation_config.eos_token_id == [SPECIAL_IDS["im_end"], SPECIAL_IDS["pad_token"]]


def test_real_token_strings_per_family() -> None:
    q25, q3 = build_tokenizer("qwen2_5_omni"), build_tokenizer("qwen3_omni")
    assert (q25.audio_token, q25.video_token, q25.vision_bos_token) == ("<|AUDIO|>", "<|VIDEO|>", "<|vision_bos|>")
    assert (q3.audio_token, q3.video_token, q3.vision_bos_token) == ("<|audio_pad|>", "<|video_pad|>",
                                                                      "<|vision_start|>")
    assert (q3.audio_bos_token, q3.audio_eos_token) == ("<|audio_start|>", "<|audio_end|>")
    with pytest.raises(ValueError, match="family"):
        build_tokenizer("llama")


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=60).filter(lambda t: "<|" not in t))
def test_tokenizer_round_trips_text(text: str) -> None:
    tok = _TOK
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)  # one byte-level symbol per UTF-8 byte
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text


_TOK = build_tokenizer("qwen2_5_omni")


def test_tokenizer_mixes_text_and_special_tokens(bundle: TinyOmni) -> None:
    tok = bundle.tokenizer
    s = f"Hi {tok.video_token}{tok.video_token} there"
    ids = tok.encode(s)
    assert ids == [72, 105, 32, SPECIAL_IDS["video_token"], SPECIAL_IDS["video_token"], 32, 116, 104, 101, 114, 101]
    assert tok.decode(ids) == s
    assert tok.decode(ids, skip_special_tokens=True) == "Hi  there"
    assert isinstance(tok.decode(list(range(1024))), str)  # every id of the model's vocabulary decodes


def test_chat_template_qwen2_5() -> None:
    tok = build_tokenizer("qwen2_5_omni")
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    assert tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_bos|><|VIDEO|><|vision_eos|>What happens?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "audio"}]},
            {"role": "assistant", "content": "A dog."}]
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|><|im_end|>\n"
        "<|im_start|>assistant\nA dog.<|im_end|>\n"
    )


def test_chat_template_qwen3() -> None:
    tok = build_tokenizer("qwen3_omni")
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Q"}]}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                    "<|vision_start|><|video_pad|><|vision_end|>Q<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids[0] == SPECIAL_IDS["im_start"] and ids.count(SPECIAL_IDS["video_token"]) == 1


def test_forward_on_interleaved_audio_video(bundle: TinyOmni) -> None:
    frames, audio = _clip(6.0)
    inputs = reference_inputs(bundle, frames=frames, audio=audio, question="What is the sound?")
    ids = inputs["input_ids"][0]
    n_video = int(inputs["video_grid_thw"].prod()) // 4
    n_audio = 150 if bundle.family == "qwen2_5_omni" else 78  # 25 / s vs 13 / s
    assert int((ids == SPECIAL_IDS["video_token"]).sum()) == n_video
    assert int((ids == SPECIAL_IDS["audio_token"]).sum()) == n_audio
    # The A/V block is <vision_bos><audio_bos> interleaved V/A <audio_eos><vision_eos>, video first.
    bos = int((ids == SPECIAL_IDS["vision_bos_token"]).nonzero()[0])
    assert ids[bos + 1] == SPECIAL_IDS["audio_bos_token"] and ids[bos + 2] == SPECIAL_IDS["video_token"]
    eos = int((ids == SPECIAL_IDS["vision_eos_token"]).nonzero()[0])
    assert ids[eos - 1] == SPECIAL_IDS["audio_eos_token"]
    with torch.no_grad():
        out = bundle.thinker(**inputs)
    assert out.logits.shape == (1, ids.shape[0], 1024) and bool(torch.isfinite(out.logits).all())
    pos, _ = bundle.thinker.model.get_rope_index(
        inputs["input_ids"], None, inputs["video_grid_thw"], inputs["attention_mask"], True,
        inputs["feature_attention_mask"].sum(-1), inputs["video_second_per_grid"])
    assert pos.shape == (3, 1, ids.shape[0])


def test_interleave_order_per_family() -> None:
    frames, audio = _clip(4.0)
    runs, per_grid = {}, {}
    for family, build in BUILDERS.items():
        h, w = VisionPreprocessConfig.for_family(family).resized_size(*frames.shape[1:3])
        factor = VisionPreprocessConfig.for_family(family).factor
        per_grid[family] = (h // factor) * (w // factor)
        ids = reference_inputs(build(), frames=frames, audio=audio)["input_ids"][0].tolist()
        block = ids[ids.index(SPECIAL_IDS["audio_bos_token"]) + 1: ids.index(SPECIAL_IDS["audio_eos_token"])]
        kinds = ["V" if i == SPECIAL_IDS["video_token"] else "A" for i in block]
        runs[family] = [(k, len(list(g))) for k, g in itertools.groupby(kinds)]
    # 2 fps -> one grid per second. Qwen2.5: per 2-s chunk, its 2 grids then its 50 audio tokens.
    v = per_grid["qwen2_5_omni"]
    assert runs["qwen2_5_omni"] == [("V", 2 * v), ("A", 50), ("V", 2 * v), ("A", 50)]
    # Qwen3: each grid at its start time, then the audio tokens (13 / s) up to the next grid.
    v = per_grid["qwen3_omni"]
    assert runs["qwen3_omni"] == [("V", v), ("A", 13)] * 4


@pytest.mark.parametrize("which", ["video", "audio"])
def test_forward_on_single_modality(bundle: TinyOmni, which: str) -> None:
    frames, audio = _clip(3.0)
    inputs = reference_inputs(bundle, frames=frames if which == "video" else None,
                              audio=audio if which == "audio" else None)
    assert "use_audio_in_video" not in inputs
    with torch.no_grad():
        logits = bundle.thinker(**inputs).logits
    assert bool(torch.isfinite(logits).all())


def test_reference_inputs_needs_media(bundle: TinyOmni) -> None:
    with pytest.raises(ValueError, match="frames, audio"):
        reference_inputs(bundle)


def test_generate_stops_on_configured_eos(bundle: TinyOmni) -> None:
    enc = bundle.tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
    out = bundle.thinker.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and 1 <= out.shape[1] - enc["input_ids"].shape[1] <= 4
    assert isinstance(bundle.tokenizer.decode(out[0]), str)


def test_small_config_has_7b_widths_and_counts() -> None:
    cfg = small_qwen2_5_omni_config(num_layers=2)
    text = cfg.get_text_config()
    assert (text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_key_value_heads) == (
        3584, 18944, 28, 4)
    assert text.num_hidden_layers == 2 and text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert (cfg.audio_config.d_model, cfg.audio_config.encoder_attention_heads, cfg.audio_config.encoder_ffn_dim,
            cfg.audio_config.encoder_layers) == (1280, 20, 5120, 2)
    assert (cfg.vision_config.hidden_size, cfg.vision_config.num_heads, cfg.vision_config.intermediate_size,
            cfg.vision_config.depth) == (1280, 16, 3420, 2)
    with torch.device("meta"):
        model = Qwen2_5OmniThinkerForConditionalGeneration(cfg)
    counts = {k: sum(p.numel() for p in getattr(model.model, k).parameters())
              for k in ("audio_tower", "visual", "language_model")}
    assert 600e6 < sum(p.numel() for p in model.parameters()) < 620e6
    assert 460e6 < counts["language_model"] < 480e6 and 40e6 < counts["audio_tower"] < 60e6
    with pytest.raises(ValueError):
        small_qwen2_5_omni_config(num_layers=0)
