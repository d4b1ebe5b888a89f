"""omnizip.preprocess against transformers' own processors (bit-exact where the processor is the reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import WhisperFeatureExtractor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder
from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import Qwen2_5OmniProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize
from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe
from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import Qwen3OmniMoeProcessor

from omnizip.preprocess import (
    AudioPreprocessConfig,
    VisionPreprocessConfig,
    audio_token_count,
    log_mel,
    log_mel_window,
    patchify_video,
    preprocess_video,
    resize_frames,
    smart_resize,
)
from omnizip.testing import tiny_qwen2_5_omni, tiny_qwen3_omni

FAMILIES = ("qwen2_5_omni", "qwen3_omni")
SR = 16000


# ----------------------------------------------------------------------------------------- vision


@settings(max_examples=300, deadline=None)
@given(
    height=st.integers(1, 5000),
    width=st.integers(1, 5000),
    budget=st.sampled_from([
        (28, 56 * 56, 28 * 28 * 1280),  # Qwen2VL image processor defaults
        (28, 128 * 28 * 28, 128 * 28 * 28),  # OmniZip video budget
        (28, 128 * 28 * 28, 768 * 28 * 28),  # Qwen2.5-Omni processor video size
        (32, 128 * 32 * 32, 768 * 32 * 32),  # Qwen3-Omni processor video size
        (32, 1, 10**9),
    ]),
)
def test_smart_resize_matches_transformers(height: int, width: int, budget: tuple[int, int, int]) -> None:
    factor, lo, hi = budget
    if max(height, width) / min(height, width) > 200:
        with pytest.raises(ValueError):
            hf_smart_resize(height, width, factor=factor, min_pixels=lo, max_pixels=hi)
        with pytest.raises(ValueError, match="aspect ratio"):
            smart_resize(height, width, factor=factor, min_pixels=lo, max_pixels=hi)
        return
    ours = smart_resize(height, width, factor=factor, min_pixels=lo, max_pixels=hi)
    assert ours == hf_smart_resize(height, width, factor=factor, min_pixels=lo, max_pixels=hi)
    assert ours[0] % factor == 0 and ours[1] % factor == 0


def test_vision_configs_match_transformers_processors() -> None:
    q25, q3 = VisionPreprocessConfig.qwen2_5_omni(), VisionPreprocessConfig.qwen3_omni()
    assert q25.image_mean == pytest.approx(OPENAI_CLIP_MEAN) and q25.image_std == pytest.approx(OPENAI_CLIP_STD)
    assert (q25.patch_size, q25.factor, q3.patch_size, q3.factor) == (14, 28, 16, 32)
    assert q3.image_mean == (0.5, 0.5, 0.5) and q3.image_std == (0.5, 0.5, 0.5)
    assert q25.resample == q3.resample == Qwen2VLImageProcessorPil.resample == Image.Resampling.BICUBIC
    assert q25.rescale_factor == Qwen2VLImageProcessorPil.rescale_factor
    assert q25.temporal_patch_size == Qwen2VLImageProcessorPil.temporal_patch_size == 2
    assert q25.merge_size == Qwen2VLImageProcessorPil.merge_size == 2
    # The processors' own video floor is 128 merged tokens per grid, the budget used here as min and max.
    assert Qwen2_5OmniProcessor.videos_kwargs["size"]["shortest_edge"] == q25.min_pixels == q25.max_pixels
    assert Qwen3OmniMoeProcessor.videos_kwargs["size"]["shortest_edge"] == q3.min_pixels == q3.max_pixels
    assert q25.second_per_grid == q3.second_per_grid == 1.0  # 2 frames at 2 fps
    assert VisionPreprocessConfig.qwen2_5_omni(max_pixels=448 * 448).max_pixels == 448 * 448


@pytest.mark.parametrize("kwargs", [dict(family="qwen4"), dict(min_pixels=10, max_pixels=5), dict(fps=0.0),
                                    dict(patch_size=0), dict(image_std=(0.5, 0.0, 0.5))])
def test_vision_config_rejects_bad_values(kwargs: dict) -> None:
    base = dict(family="qwen2_5_omni", patch_size=14) | kwargs
    with pytest.raises(ValueError):
        VisionPreprocessConfig(**base)


def _pil_processor(cfg: VisionPreprocessConfig) -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(patch_size=cfg.patch_size, temporal_patch_size=cfg.temporal_patch_size,
                                    merge_size=cfg.merge_size, image_mean=list(cfg.image_mean),
                                    image_std=list(cfg.image_std),
                                    size={"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels})


def _frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Random pixels plus a smooth gradient, so resampling sees both noise and structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    grad = ((yy * 255 // max(h - 1, 1) + xx * 127 // max(w - 1, 1)) % 256)[None, :, :, None]
    noise = rng.integers(0, 256, (n, h, w, 3))
    return ((grad + noise) // 2).astype(np.uint8)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("n_frames", "height", "width", "budget"), [
    (1, 97, 131, None),  # one frame: padded to a full temporal patch; upscaled (ceil branch)
    (4, 224, 224, None),
    (5, 480, 640, None),  # odd frame count, downscaled (floor branch)
    (3, 33, 701, None),  # odd sizes, wide
    (2, 700, 300, 768 * 28 * 28),  # a larger pixel budget
])
def test_preprocess_video_bit_exact_vs_pil_image_processor(family: str, n_frames: int, height: int, width: int,
                                                           budget: int | None) -> None:
    """Compared: for every frame f, transformers' Qwen2VLImageProcessorPil(frame f) -> [rows, C, tp, p, p]
    (its temporal copies are identical) equals our pixel rows of grid f // 2, temporal slot f % 2; for
    an odd F the padded slot equals the last frame's image-processor output. Same resize (smart_resize +
    PIL bicubic), rescale, normalise and merge-order layout; max |diff| must be exactly 0."""
    cfg = VisionPreprocessConfig.for_family(family)
    if budget is not None:
        cfg = VisionPreprocessConfig.for_family(family, max_pixels=budget, min_pixels=56 * 56)
    frames = _frames(n_frames, height, width)
    frames_before = frames.copy()
    pixel_values, grid_thw = preprocess_video(frames, cfg)
    np.testing.assert_array_equal(frames, frames_before)

    ip = _pil_processor(cfg)
    ref = [ip(f, return_tensors="np", input_data_format="channels_last") for f in frames]
    gt, gh, gw = grid_thw[0].tolist()
    assert grid_thw.dtype == torch.long and gt == -(-n_frames // 2)
    assert all(tuple(r["image_grid_thw"][0]) == (1, gh, gw) for r in ref)
    p, tp = cfg.patch_size, cfg.temporal_patch_size
    assert pixel_values.dtype == torch.float32 and pixel_values.shape == (gt * gh * gw, 3 * tp * p * p)
    ours = pixel_values.numpy().reshape(gt, gh * gw, 3, tp, p, p)
    for f in range(gt * tp):
        src = min(f, n_frames - 1)  # padded slots repeat the last frame
        theirs = ref[src]["pixel_values"].reshape(gh * gw, 3, tp, p, p)[:, :, 0]
        assert np.abs(ours[f // tp, :, :, f % tp] - theirs).max() == 0.0


def test_resize_frames_matches_pil_and_keeps_uint8() -> None:
    cfg = VisionPreprocessConfig.qwen2_5_omni()
    frames = _frames(2, 120, 160)
    out = resize_frames(frames, cfg)
    h, w = cfg.resized_size(120, 160)
    assert out.dtype == np.uint8 and out.shape == (2, h, w, 3)
    expect = np.asarray(Image.fromarray(frames[1]).resize((w, h), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(out[1], expect)
    np.testing.assert_array_equal(resize_frames(torch.from_numpy(frames), cfg), out)


@pytest.mark.parametrize("bad", [np.zeros((2, 56, 56, 3), np.float32), np.zeros((56, 56, 3), np.uint8),
                                 np.zeros((0, 56, 56, 3), np.uint8), np.zeros((2, 56, 56, 4), np.uint8)])
def test_patchify_rejects_bad_frames(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8 array"):
        patchify_video(bad, VisionPreprocessConfig.qwen2_5_omni())


def test_patchify_rejects_unresized_frames() -> None:
    with pytest.raises(ValueError, match="resize_frames"):
        patchify_video(np.zeros((2, 50, 56, 3), np.uint8), VisionPreprocessConfig.qwen2_5_omni())


# ------------------------------------------------------------------------------------------ audio


def _tone_clip(n: int, seed: int = 0) -> np.ndarray:
    """A chirp whose loudness steps up 250x after 4 s, over faint noise (exercises the max-8 dB floor)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    env = np.where(t < 4.0, 0.002, 0.5) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    return (env * np.sin(2 * np.pi * (300 + 200 * t) * t) + 5e-4 * rng.standard_normal(n)).astype(np.float32)


def _processor_features(family: str, audio: np.ndarray) -> tuple[np.ndarray, int]:
    """What each family's processor computes (valid frames only)."""
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=SR, hop_length=160, chunk_length=300, n_fft=400,
                                 padding_value=0.0, return_attention_mask=True)
    assert (fe.n_samples, fe.nb_max_frames) == (4_800_000, 30_000)
    if family == "qwen2_5_omni":  # Qwen2_5OmniProcessor._process_audio forces padding="max_length"
        out = fe(audio, sampling_rate=SR, padding="max_length", return_attention_mask=True, return_tensors="np")
    else:  # Qwen3OmniMoeProcessor.audio_kwargs: padding=True, truncation=False
        kw = Qwen3OmniMoeProcessor.audio_kwargs
        assert kw["padding"] is True and kw["truncation"] is False
        out = fe(audio, sampling_rate=SR, padding=True, truncation=False, return_attention_mask=True,
                 return_tensors="np")
    n_valid = int(out["attention_mask"].sum())
    return out["input_features"][0, :, :n_valid], n_valid


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n_samples", [int(7.3 * SR) + 37, 2 * SR])
def test_log_mel_equals_processor_features(family: str, n_samples: int) -> None:
    audio = _tone_clip(n_samples)
    feats, mask = log_mel(audio, AudioPreprocessConfig.for_family(family))
    ref, n_valid = _processor_features(family, audio)
    assert feats.dtype == torch.float32 and mask.dtype == torch.long
    assert feats.shape == (1, 128, n_valid) and mask.shape == (1, n_valid) and bool(mask.all())
    assert n_valid == AudioPreprocessConfig.for_family(family).num_frames(n_samples)
    assert np.abs(feats[0].numpy() - ref).max() == 0.0


def test_log_mel_frame_counts_differ_by_family_end_rule() -> None:
    audio = _tone_clip(SR + 100)  # not a multiple of the hop
    q25 = log_mel(audio, AudioPreprocessConfig.for_family("qwen2_5_omni"))[0]
    q3 = log_mel(audio, AudioPreprocessConfig.for_family("qwen3_omni"))[0]
    assert (q25.shape[-1], q3.shape[-1]) == (101, 100)  # ceil vs floor of n / 160


def test_log_mel_never_truncates() -> None:
    cfg = AudioPreprocessConfig.for_family("qwen2_5_omni", chunk_length_s=1)  # extractor max 1 s
    feats, mask = log_mel(_tone_clip(3 * SR), cfg)
    assert feats.shape[-1] == mask.shape[-1] == 300


@pytest.mark.parametrize("bad", [np.zeros(100, np.float32), np.zeros((2, 1000), np.float32),
                                 np.zeros(1000, np.int16), np.full(1000, np.nan, np.float32)])
def test_log_mel_rejects_bad_audio(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        log_mel(bad)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 40_000))
def test_audio_token_count_matches_model_functions(n: int) -> None:
    q25_model = Qwen2_5OmniAudioEncoder._get_feat_extract_output_lengths(None, torch.tensor(n))[1]  # type: ignore[arg-type]
    assert audio_token_count(n, "qwen2_5_omni") == int(q25_model)
    q3_model = modeling_qwen3_omni_moe._get_feat_extract_output_lengths(torch.tensor(n), 50)
    assert audio_token_count(n, "qwen3_omni") == int(q3_model)


def test_audio_token_count_rates() -> None:
    assert audio_token_count(1000, "qwen2_5_omni") == 250  # 10 s -> 25 tokens/s
    assert audio_token_count(730, "qwen2_5_omni") == 182  # 7.3 s
    assert audio_token_count(1000, "qwen3_omni") == 130  # 10 s -> 13 tokens/s
    assert audio_token_count(0, "qwen3_omni") == 0
    with pytest.raises(ValueError):
        audio_token_count(-1, "qwen2_5_omni")
    with pytest.raises(ValueError, match="family"):
        audio_token_count(10, "qwen2_omni")


@pytest.mark.parametrize("family", FAMILIES)
def test_audio_token_count_equals_encoder_output(family: str) -> None:
    bundle = tiny_qwen2_5_omni() if family == "qwen2_5_omni" else tiny_qwen3_omni()
    cfg = AudioPreprocessConfig.for_family(family)
    for n_samples in (SR, int(2.37 * SR), int(8.5 * SR) + 11):
        feats, mask = log_mel(_tone_clip(n_samples), cfg)
        with torch.no_grad():
            out = bundle.thinker.model.get_audio_features(feats, mask).last_hidden_state
        assert out.shape[0] == audio_token_count(mask.shape[-1], family, n_window=bundle.config.audio_config.n_window)


# ------------------------------------------------------------------------------- streaming log-mel


def _windows(audio: np.ndarray, cfg: AudioPreprocessConfig, window: int, *, right: bool, running: bool):
    """Per-window features with 400 samples of left context; yields (start_frame, MelWindow, floor_max)."""
    run = None
    for start in range(0, audio.shape[0], window):
        end = start + window
        left = audio[max(0, start - 400):start] if start else None
        right_ctx = audio[end:end + 40] if right and end < audio.shape[0] else None
        mw = log_mel_window(audio[start:end], left, right_context=right_ctx,
                            running_max_log10=run if running else None, cfg=cfg)
        if running:
            run = mw.max_log10
        yield start // cfg.hop_length, mw


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n_samples", [10 * SR, 10 * SR + 1234])
def test_log_mel_window_equals_whole_clip_up_to_the_floor(family: str, n_samples: int) -> None:
    """Whole clip vs 2-s windows (200 left + 40 right context samples, running-max floor).

    Let v be a bin's raw log10 mel, g the clip max and r the running max when the window is computed.
    Whole clip: max(v, g-8); window: max(v, r-8) with r <= g. So bins above the clip floor agree up to
    float32 rounding of a differently shaped STFT/matmul (1e-6 = 8 ulp at |x| ~ 1), and floored bins
    are lower in the window by at most (g - r) / 4 feature units (Whisper maps x -> (x + 4) / 4)."""
    cfg = AudioPreprocessConfig.for_family(family)
    audio = _tone_clip(n_samples)
    whole = log_mel(audio, cfg)[0][0]
    g = float(whole.max()) * 4 - 4  # back to log10 units
    clip_floor = whole.min()
    pieces = []
    for f0, mw in _windows(audio, cfg, 2 * SR, right=True, running=True):
        per = mw.input_features[0]
        ref = whole[:, f0:f0 + per.shape[-1]]
        assert mw.feature_attention_mask.shape == (1, per.shape[-1])
        above = ref > clip_floor
        assert (per - ref)[above].abs().max() <= 1e-6
        gap = ref - per
        assert gap.min() >= -1e-6 and gap.max() <= (g - mw.max_log10) / 4 + 1e-6
        if mw.max_log10 >= g - 1e-6:  # the loudest moment has been seen: exact from here on
            assert gap.abs().max() <= 1e-6
        pieces.append(per)
    assert torch.cat(pieces, -1).shape == whole.shape


def test_log_mel_window_without_right_context_differs_only_at_window_ends() -> None:
    cfg = AudioPreprocessConfig.for_family("qwen2_5_omni")
    audio = _tone_clip(6 * SR)
    whole = log_mel(audio, cfg)[0][0]
    for f0, mw in _windows(audio, cfg, 2 * SR, right=False, running=True):
        if f0 < 400:
            continue  # before and at the loudness step the floor differs; checked above
        diff = (mw.input_features[0] - whole[:, f0:f0 + 200]).abs().amax(0)
        assert diff[:-1].max() <= 1e-6  # only the last frame lacks its 40 samples of look-ahead


def test_log_mel_window_first_window_matches_reflect_start() -> None:
    cfg = AudioPreprocessConfig.for_family("qwen3_omni")
    audio = _tone_clip(3 * SR)
    whole = log_mel(audio, cfg)[0]
    mw = log_mel_window(audio[: 2 * SR], None, right_context=audio[2 * SR:2 * SR + 40], cfg=cfg)
    assert (mw.input_features - whole[:, :, :200]).abs().max() <= 1e-6  # first 2 s hold the clip max


def test_log_mel_window_rejects_bad_context() -> None:
    audio = _tone_clip(3 * SR)
    with pytest.raises(ValueError, match="left_context"):
        log_mel_window(audio[SR:2 * SR], audio[SR - 100:SR])
    with pytest.raises(ValueError, match="right_context"):
        log_mel_window(audio[SR:2 * SR], audio[:SR], right_context=audio[2 * SR:2 * SR + 10])
    with pytest.raises(ValueError, match="multiple"):
        log_mel_window(audio[SR:2 * SR + 7], audio[:SR], right_context=audio[2 * SR + 7:])
    with pytest.raises(ValueError, match="empty"):
        log_mel_window(audio[:0], audio[:SR])
