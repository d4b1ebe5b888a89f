"""Random-weight Qwen-Omni thinkers and an offline tokenizer, for tests, demos and CPU benchmarks.

Nothing is downloaded: the configs are built in code and the tokenizer is a byte-level vocabulary
built in memory, whose special tokens carry the real checkpoints' strings (mapped to small ids), so
a real checkpoint and a tiny one go through the same adapter code. Model classes are imported only
when a builder is called.

The special ids of the tiny vocabulary (1024 entries; ids 0..255 are the 256 byte-level symbols):
``<|endoftext|>`` 1000, audio 1001, audio_bos 1002, audio_eos 1003, image 1004, video 1005,
vision_bos 1006, vision_eos 1007, ``<|im_start|>`` 1008, ``<|im_end|>`` 1009.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from omnizip.preprocess import (
    AudioPreprocessConfig,
    Family,
    VisionPreprocessConfig,
    audio_token_count,
    log_mel,
    preprocess_video,
)

SPECIAL_IDS: dict[str, int] = {
    "pad_token": 1000, "audio_token": 1001, "audio_bos_token": 1002, "audio_eos_token": 1003,
    "image_token": 1004, "video_token": 1005, "vision_bos_token": 1006, "vision_eos_token": 1007,
    "im_start": 1008, "im_end": 1009,
}
"""Ids of the special tokens in the tiny vocabulary (same for both families)."""

TOKEN_STRINGS: dict[Family, dict[str, str]] = {
    "qwen2_5_omni": {
        "pad_token": "<|endoftext|>", "audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>",
        "audio_eos_token": "<|audio_eos|>", "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>",
        "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
        "im_start": "<|im_start|>", "im_end": "<|im_end|>",
    },
    "qwen3_omni": {
        "pad_token": "<|endoftext|>", "audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>",
        "audio_eos_token": "<|audio_end|>", "image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
        "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>",
        "im_start": "<|im_start|>", "im_end": "<|im_end|>",
    },
}
"""Special-token strings of the real checkpoints' tokenizers, per family."""

TINY_VOCAB_SIZE = 1024
_DEFAULT_SYSTEM = "You are a helpful assistant."


@dataclass(frozen=True)
class TinyOmni:
    """A random-weight thinker with its tokenizer.

    Attributes:
        thinker: ``Qwen2_5OmniThinkerForConditionalGeneration`` or
            ``Qwen3OmniMoeThinkerForConditionalGeneration``, eval mode, fp32 (unless asked otherwise), sdpa.
        tokenizer: a ``transformers`` fast tokenizer (see :func:`build_tokenizer`).
        family: ``"qwen2_5_omni"`` or ``"qwen3_omni"``.
        config: ``thinker.config``.
    """

    thinker: Any
    tokenizer: Any
    family: Family
    config: Any


def _lit(text: str) -> str:
    """Return a Jinja expression printing ``text`` verbatim (whitespace control never eats its newlines)."""
    return "{{ '" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "' }}"


def _chat_template(tokens: dict[str, str], default_system: str | None) -> str:
    t = tokens
    media = (
        "{%- if item['type'] == 'audio' %}" + _lit(t["audio_bos_token"] + t["audio_token"] + t["audio_eos_token"])
        + "{%- elif item['type'] == 'image' %}" + _lit(t["vision_bos_token"] + t["image_token"] + t["vision_eos_token"])
        + "{%- elif item['type'] == 'video' %}" + _lit(t["vision_bos_token"] + t["video_token"] + t["vision_eos_token"])
        + "{%- elif item['type'] == 'text' %}{{ item['text'] }}{%- endif %}"
    )
    system = ""
    if default_system:
        system = ("{%- if loop.first and message['role'] != 'system' %}"
                  + _lit(f"{t['im_start']}system\n{default_system}{t['im_end']}\n") + "{%- endif %}")
    return (
        "{%- for message in messages %}" + system
        + "{{ '" + t["im_start"] + "' + message['role'] + '\\n' }}"
        + "{%- if message['content'] is string %}{{ message['content'] }}"
        + "{%- else %}{%- for item in message['content'] %}" + media + "{%- endfor %}{%- endif %}"
        + _lit(t["im_end"] + "\n") + "{%- endfor %}"
        + "{%- if add_generation_prompt %}" + _lit(t["im_start"] + "assistant\n") + "{%- endif %}"
    )


def build_tokenizer(family: str) -> Any:
    r"""Build an offline byte-level tokenizer with the family's special-token strings at :data:`SPECIAL_IDS`.

    Any UTF-8 text round-trips (one token per byte); every special token encodes to one id. The
    named multimodal tokens are attributes as on the real tokenizers (``tokenizer.video_token``,
    ``tokenizer.video_token_id``, ...); eos is ``<|im_end|>``, pad ``<|endoftext|>``, padding side left.
    The chat template renders ``<|im_start|>role\\n...<|im_end|>\\n`` turns; list contents may hold
    ``{"type": "text"|"audio"|"image"|"video"}`` items, rendered as the checkpoints render them
    (e.g. ``<|vision_bos|><|VIDEO|><|vision_eos|>``). As in the Qwen2.5-Omni template, a default
    system turn is added when the first message is not a system one (not for Qwen3-Omni).

    Args:
        family: ``"qwen2_5_omni"`` or ``"qwen3_omni"``.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with ``len(tokenizer) == 1024``.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if family not in TOKEN_STRINGS:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(TOKEN_STRINGS)}")
    tokens = TOKEN_STRINGS[family]  # type: ignore[index]
    # GPT-2 byte order: printable bytes map to themselves, the rest to U+0100 onwards.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    symbol_of = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    vocab = {symbol_of[b]: b for b in range(256)}
    letters = "abcdefghijklmnopqrstuvwxyz"
    # Ids 256..999 decode to letter pairs / " x" so random-weight output is readable; never produced by encode.
    fillers = [a + b for a in letters for b in letters] + ["Ġ" + a for a in letters]
    for i, text in enumerate(fillers[: SPECIAL_IDS["pad_token"] - 256]):
        vocab[text] = 256 + i
    used = set(vocab.values()) | set(SPECIAL_IDS.values())
    reserved = {f"<|reserved_{i}|>": i for i in range(TINY_VOCAB_SIZE) if i not in used}
    specials = {tokens[name]: idx for name, idx in SPECIAL_IDS.items()} | reserved
    vocab |= specials
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    ordered = sorted(specials, key=lambda s: specials[s])
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ordered])
    named = {k: v for k, v in tokens.items() if k.endswith("_token") and k != "pad_token"}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=tokens["im_end"], pad_token=tokens["pad_token"],
        extra_special_tokens=named, padding_side="left", model_max_length=32768,
        chat_template=_chat_template(tokens, _DEFAULT_SYSTEM if family == "qwen2_5_omni" else None),
    )


def _token_ids() -> dict[str, Any]:
    s = SPECIAL_IDS
    return dict(audio_start_token_id=s["audio_bos_token"], audio_end_token_id=s["audio_eos_token"],
                vision_start_token_id=s["vision_bos_token"], vision_end_token_id=s["vision_eos_token"])


def _finish(model: Any, tokenizer: Any, family: Family, dtype: torch.dtype) -> TinyOmni:
    model.eval()
    if dtype != torch.float32:
        model.to(dtype)
    gen = model.generation_config
    gen.eos_token_id = [SPECIAL_IDS["im_end"], SPECIAL_IDS["pad_token"]]
    gen.pad_token_id = SPECIAL_IDS["pad_token"]
    return TinyOmni(thinker=model, tokenizer=tokenizer, family=family, config=model.config)


def _build(cfg: Any, model_cls_name: str, family: Family, seed: int,
           dtype: torch.dtype = torch.float32) -> TinyOmni:
    import transformers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, model_cls_name)(cfg)
    return _finish(model, build_tokenizer(family), family, dtype)


def _config(config_cls_name: str, kwargs: dict[str, Any]) -> Any:
    import transformers

    cfg = getattr(transformers, config_cls_name)(**kwargs)
    cfg._attn_implementation = "sdpa"
    return cfg


def tiny_qwen2_5_omni(seed: int = 0) -> TinyOmni:
    """Tiny random Qwen2.5-Omni thinker (about 0.33 M parameters), built in a few tens of ms.

    Audio: 2 layers, d 32, ``n_window`` 100 (2-s blocks as the real model); vision: 2 blocks,
    width 32, patch 14, window 112, block 1 full attention; LLM: 2 layers, hidden 64, 4/2 heads,
    head_dim 16, ``mrope_section`` [2, 3, 3], vocab 1024; 25 position ids per second, 2-s chunks.

    Args:
        seed: seed of the random weights (the global torch RNG is left untouched).
    """
    kwargs = dict(
        audio_config=dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                          d_model=32, output_dim=64, n_window=100),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=64,
                           fullatt_block_indexes=[1]),
        text_config=dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 3, 3])),
        audio_token_index=SPECIAL_IDS["audio_token"], image_token_index=SPECIAL_IDS["image_token"],
        video_token_index=SPECIAL_IDS["video_token"], position_id_per_seconds=25, seconds_per_chunk=2,
        **_token_ids(),
    )
    return _build(_config("Qwen2_5OmniThinkerConfig", kwargs), "Qwen2_5OmniThinkerForConditionalGeneration",
                  "qwen2_5_omni", seed)


def tiny_qwen3_omni(seed: int = 0) -> TinyOmni:
    """Tiny random Qwen3-Omni MoE thinker (about 0.38 M parameters).

    Audio: 2 layers, d 32, ``n_window`` 50 (1-s conv chunks), ``n_window_infer`` 800 (8-s attention
    windows) as the real model; vision: 2 blocks, width 32, patch 16, 64 position embeddings,
    deepstack after blocks 0 and 1; LLM: 2 MoE layers (4 experts, top-2), hidden 64, 4/2 heads,
    head_dim 16, interleaved ``mrope_section`` [2, 3, 3], vocab 1024; 13 position ids per second
    (the real checkpoint's value, not the config class default of 25).

    Args:
        seed: seed of the random weights (the global torch RNG is left untouched).
    """
    kwargs = dict(
        audio_config=dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                          d_model=32, output_dim=64, n_window=50, n_window_infer=800, conv_chunksize=500,
                          downsample_hidden_size=16),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                           num_position_embeddings=64, deepstack_visual_indexes=[0, 1]),
        text_config=dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, moe_intermediate_size=32,
                         num_experts=4, num_experts_per_tok=2,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 3, 3],
                                              mrope_interleaved=True)),
        audio_token_id=SPECIAL_IDS["audio_token"], image_token_id=SPECIAL_IDS["image_token"],
        video_token_id=SPECIAL_IDS["video_token"], position_id_per_seconds=13, **_token_ids(),
    )
    return _build(_config("Qwen3OmniMoeThinkerConfig", kwargs), "Qwen3OmniMoeThinkerForConditionalGeneration",
                  "qwen3_omni", seed)


def small_qwen2_5_omni_config(num_layers: int = 2) -> Any:
    """Return the ``Qwen2_5OmniThinkerConfig`` of :func:`small_qwen2_5_omni` (e.g. for meta-device sizing).

    Args:
        num_layers: LLM decoder layers (>= 1).
    """
    import transformers

    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    cfg = transformers.Qwen2_5OmniThinkerConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=20, encoder_ffn_dim=5120,
                          d_model=1280, output_dim=3584, n_window=100),
        vision_config=dict(depth=2, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=3584,
                           fullatt_block_indexes=[1]),
        text_config=dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=3584, intermediate_size=18944,
                         num_hidden_layers=num_layers, num_attention_heads=28, num_key_value_heads=4,
                         tie_word_embeddings=False,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24])),
        audio_token_index=SPECIAL_IDS["audio_token"], image_token_index=SPECIAL_IDS["image_token"],
        video_token_index=SPECIAL_IDS["video_token"], position_id_per_seconds=25, seconds_per_chunk=2,
        **_token_ids(),
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def small_qwen2_5_omni(seed: int = 0, num_layers: int = 2, dtype: torch.dtype = torch.float32) -> TinyOmni:
    """Random Qwen2.5-Omni-7B-width thinker with few layers, for CPU benchmarks.

    Real widths: LLM hidden 3584, 28/4 heads (head_dim 128), ffn 18944, ``mrope_section`` [16, 24, 24];
    audio d 1280, 20 heads, ffn 5120; vision width 1280, 16 heads, ffn 3420, window 112. Depth is cut
    to ``num_layers`` LLM layers, 2 audio layers and 2 vision blocks (block 1 full attention), and
    the vocabulary is the tiny tokenizer's 1024. With ``num_layers=2``: 608 M parameters (audio
    49 M, vision 86 M, LLM 470 M, lm_head 4 M), 2.3 GiB in fp32; each extra LLM layer adds 233 M.
    The random init takes about 15 s on 2 CPU cores.

    Args:
        seed: seed of the random weights (the global torch RNG is left untouched).
        num_layers: LLM decoder layers (>= 1).
        dtype: parameter dtype after init (``torch.float32`` or ``torch.bfloat16``).
    """
    return _build(small_qwen2_5_omni_config(num_layers), "Qwen2_5OmniThinkerForConditionalGeneration",
                  "qwen2_5_omni", seed, dtype)


def reference_inputs(bundle: TinyOmni, *, frames: np.ndarray | None = None, audio: np.ndarray | None = None,
                     question: str = "What is happening?") -> dict[str, Any]:
    """Build the thinker inputs the checkpoint's processor would build for one clip, without torchvision.

    The prompt is the chat template with a user turn ``[video or audio item, question]`` and the
    generation prompt; the media placeholder is expanded with the processor's own method
    (``replace_video_with_audio_token`` of ``Qwen2_5OmniProcessor`` / ``Qwen3OmniMoeProcessor``,
    called with a stand-in ``self``) when both video and audio are given (``use_audio_in_video``),
    else into plain runs of video or audio tokens. Pixels and log-mel come from
    :mod:`omnizip.preprocess`. Use it as the "stock transformers" reference in adapter tests.

    Args:
        bundle: a :class:`TinyOmni` (any random-weight thinker built here).
        frames: ``uint8 [F, H, W, 3]`` frames sampled at 2 fps, or ``None`` for audio only.
        audio: ``float32 [n]`` 16 kHz mono samples, or ``None`` for video only.
        question: the user's text after the media.

    Returns:
        Keyword arguments for ``bundle.thinker(**inputs)``: ``input_ids``/``attention_mask``
        ``[1, L]``, and when present ``pixel_values_videos``, ``video_grid_thw``,
        ``video_second_per_grid`` ``[1]``, ``input_features`` ``[1, 128, T]``,
        ``feature_attention_mask`` ``[1, T]``, ``use_audio_in_video``.
    """
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import Qwen2_5OmniProcessor
    from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import Qwen3OmniMoeProcessor

    if frames is None and audio is None:
        raise ValueError("give frames, audio or both")
    tok, cfg = bundle.tokenizer, bundle.config
    out: dict[str, Any] = {}
    vision_cfg = VisionPreprocessConfig.for_family(bundle.family)
    merge = vision_cfg.merge_size
    n_audio = 0
    if audio is not None:
        audio_cfg = AudioPreprocessConfig.for_family(bundle.family)
        out["input_features"], out["feature_attention_mask"] = log_mel(audio, audio_cfg)
        n_audio = audio_token_count(out["feature_attention_mask"].shape[-1], bundle.family,
                                    n_window=cfg.audio_config.n_window)
    if frames is not None:
        out["pixel_values_videos"], out["video_grid_thw"] = preprocess_video(frames, vision_cfg)
        out["video_second_per_grid"] = torch.tensor([vision_cfg.second_per_grid])
    item = {"type": "video" if frames is not None else "audio"}
    text = tok.apply_chat_template([{"role": "user", "content": [item, {"type": "text", "text": question}]}],
                                   add_generation_prompt=True, tokenize=False)
    if frames is not None and audio is not None:
        stand_in = SimpleNamespace(
            audio_bos_token=tok.audio_bos_token, audio_eos_token=tok.audio_eos_token, audio_token=tok.audio_token,
            video_token=tok.video_token, video_processor=SimpleNamespace(merge_size=merge),
            get_chunked_index=lambda idx, n: Qwen2_5OmniProcessor.get_chunked_index(None, idx, n),  # type: ignore[arg-type]
        )
        processor_cls = Qwen2_5OmniProcessor if bundle.family == "qwen2_5_omni" else Qwen3OmniMoeProcessor
        placeholder = processor_cls.replace_video_with_audio_token(
            stand_in,  # type: ignore[arg-type]
            {"video_grid_thw": out["video_grid_thw"].numpy(), "video_second_per_grid": [vision_cfg.second_per_grid]},
            0, {"num_audio_tokens": np.array([n_audio])}, 0,
            position_id_per_seconds=cfg.position_id_per_seconds,
            seconds_per_chunk=getattr(cfg, "seconds_per_chunk", 2.0),
        )
        text = text.replace(tok.video_token, placeholder, 1)
        out["use_audio_in_video"] = True
    elif frames is not None:
        text = text.replace(tok.video_token, tok.video_token * (int(out["video_grid_thw"].prod()) // merge**2), 1)
    else:
        text = text.replace(tok.audio_token, tok.audio_token * n_audio, 1)
    enc = tok(text, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], **out}
