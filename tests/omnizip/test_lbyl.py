"""Listen before you look (``vision_budget="audio"``): the grid plan and the budget it keeps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omnizip_synth import Spec, make_layout

from omnizip import OmniZipConfig, make_compressor
from omnizip.preprocess import VisionPreprocessConfig
from omnizip.types import count_kept
from omnizip.vision_budget import (
    MIN_AREA_FRACTION,
    VisionBudgetInput,
    choose_vision_plan,
    drop_static_frames,
    frame_change_scores,
    plan_frames,
)

# 36 LLM tokens (6 x 6 merged) per grid step keeps the synthetic windows small.
CFG = VisionPreprocessConfig.qwen2_5_omni(min_pixels=36 * 28 * 28, max_pixels=36 * 28 * 28)


def _frames(changes: list[int], size: int = 56, seed: int = 0) -> np.ndarray:
    """``len(changes) + 1`` frames; frame ``i + 1`` differs from frame ``i`` by ``changes[i]`` grey levels."""
    rng = np.random.default_rng(seed)
    first = rng.integers(0, 128, (size, size, 3)).astype(np.int32)
    out = [first]
    for c in changes:
        out.append(out[-1] + c)
    return np.stack([np.clip(f, 0, 255) for f in out]).astype(np.uint8)


def _input(frames: np.ndarray, saliency: torch.Tensor | None = None, n_audio: int = 50, first_grid: int = 0):
    h, w = CFG.resized_size(frames.shape[1], frames.shape[2])
    grid = (len(frames) // CFG.temporal_patch_size, h // CFG.patch_size, w // CFG.patch_size)
    return VisionBudgetInput(frames, grid, CFG, saliency, n_audio, first_grid)


def test_change_score_drops_the_most_static_frames_first() -> None:
    frames = _frames([40, 0, 30, 1, 50])  # frame 2 repeats frame 1, frame 4 is almost frame 3
    change = frame_change_scores(frames)
    assert change.shape == (6, 6) and change[1, 2] == 0.0
    assert drop_static_frames(change, 5) == [0, 1, 3, 4, 5]
    assert drop_static_frames(change, 4) == [0, 1, 3, 5]
    assert drop_static_frames(change, 1) == [0]


@pytest.mark.parametrize("axes", ["temporal", "spatial", "both"])
def test_plan_is_the_cheapest_grid_that_holds_the_needed_tokens(axes) -> None:
    inp = _input(_frames([20, 0, 20]))  # 4 frames: 2 grid steps of 36 tokens
    assert inp.nominal_tokens == 72
    plan = choose_vision_plan(inp, 22, axes=axes, headroom=1.25)  # needs 28 tokens
    t, h, w = plan.grid_thw
    tokens = t * h * w // 4
    assert 28 <= tokens < 72 and plan.patches < 4 * 72
    if axes == "temporal":
        assert (h, w) == inp.grid_thw[1:] and t == 1 and plan.frame_index == (0, 1)  # frame 2 repeats 1: dropped
        assert plan.fps_scale == 0.5 and plan.min_pixels is None
    if axes == "spatial":
        assert t == 2 and plan.frame_index == (0, 1, 2, 3) and plan.fps_scale == 1.0
        assert h * w >= MIN_AREA_FRACTION * inp.grid_thw[1] * inp.grid_thw[2]
    frames, cfg = plan_frames(inp, plan)
    assert len(frames) == t * 2
    assert tuple(x // cfg.patch_size for x in cfg.resized_size(56, 56)) == (h, w)


def test_a_high_budget_encodes_the_full_grid() -> None:
    inp = _input(_frames([20, 20, 20]))
    plan = choose_vision_plan(inp, 65, headroom=1.25)
    assert plan.grid_thw == inp.grid_thw and plan.frame_index == (0, 1, 2, 3) and plan.min_pixels is None


def test_no_temporal_reduction_off_the_step_grid() -> None:
    # A window starting at grid step 3 of a stream cannot be encoded as 1 step of 2 s at step 1.5.
    plan = choose_vision_plan(_input(_frames([0, 0, 0]), first_grid=3), 10, axes="temporal")
    assert plan.grid_thw[0] == 2
    plan = choose_vision_plan(_input(_frames([0, 0, 0]), first_grid=4), 10, axes="temporal")
    assert plan.grid_thw[0] == 1 and plan.first_grid == 2


def test_option_is_off_by_default_and_validated() -> None:
    cfg = OmniZipConfig(mode="streaming")
    assert cfg.vision_budget == "off"
    assert make_compressor("omnizip", cfg).vision_planner() is None
    assert make_compressor("omnizip", dataclasses.replace(cfg, vision_budget="audio")).vision_planner() is not None
    assert make_compressor("omnizip-lbyl", cfg).vision_planner() is not None
    with pytest.raises(ValueError, match="vision_budget"):
        OmniZipConfig(vision_budget="video")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="headroom"):
        OmniZipConfig(vision_budget_headroom=0.5)
    with pytest.raises(ValueError, match="streaming"):
        make_compressor("omnizip-lbyl", OmniZipConfig())


def _run_stream(comp, rng: np.random.Generator, n_windows: int, n_audio: int, static: float):
    """Windows through ``plan_vision`` then ``plan`` on a synthetic layout of the encoded grid."""
    records = []
    for i in range(n_windows):
        changes = [int(x) for x in rng.choice([0, 1, 30], size=3, p=[static, (1 - static) / 2, (1 - static) / 2])]
        saliency = torch.from_numpy(rng.random(n_audio).astype(np.float32) ** rng.uniform(0.2, 5))
        inp = _input(_frames(changes, seed=i), saliency, n_audio, first_grid=2 * i)
        plan = comp.plan_vision(inp)
        t, h, w = plan.grid_thw
        layout = make_layout(Spec(chunks=((n_audio, t),), p=h * w // 4, d=8), seed=i)
        layout = dataclasses.replace(layout, audio_saliency=saliency)
        keep = comp.plan(layout)
        kept = count_kept(layout, keep.keep)["video_kept"]
        records.append((inp.nominal_tokens, kept, plan, t * h * w // 4))
    return records


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    rho_video=st.sampled_from([0.6, 0.7]),
    axes=st.sampled_from(["temporal", "spatial", "both"]),
    static=st.floats(0.0, 1.0),
)
def test_any_30_windows_keep_the_video_budget_within_2_points(seed, rho_video, axes, static) -> None:
    cfg = OmniZipConfig(rho_audio=0.4, rho_video=rho_video, mode="streaming", vision_budget="audio",
                        vision_budget_axes=axes)
    comp = make_compressor("omnizip", cfg)
    records = _run_stream(comp, np.random.default_rng(seed), 34, 25, static)
    target = 1.0 - rho_video
    for _nominal, kept, plan, encoded in records:
        assert kept == plan.keep_tokens <= encoded  # the audio-only prediction is the count plan() keeps
    for start in range(len(records) - 30 + 1):
        part = records[start:start + 30]
        achieved = sum(r[1] for r in part) / sum(r[0] for r in part)
        assert abs(achieved - target) <= 0.02 + 1e-9
    if rho_video == 0.7:  # at the 35 % setting every axis fits the tower a smaller grid on average
        assert sum(r[2].patches for r in records) < 0.75 * sum(4 * r[0] for r in records)


def test_the_keep_counts_are_plain_streaming_omnizip_s() -> None:
    """Same audio -> same controller decisions with and without the option (only the grid differs)."""
    rng = np.random.default_rng(3)
    base = OmniZipConfig(rho_audio=0.4, rho_video=0.7, mode="streaming")
    lbyl = _run_stream(make_compressor("omnizip-lbyl", base), rng, 12, 25, 0.3)
    plain = make_compressor("omnizip", base)
    rng = np.random.default_rng(3)
    for i in range(12):
        changes = [int(x) for x in rng.choice([0, 1, 30], size=3, p=[0.3, 0.35, 0.35])]
        saliency = torch.from_numpy(rng.random(25).astype(np.float32) ** rng.uniform(0.2, 5))
        del changes
        layout = make_layout(Spec(chunks=((25, 2),), p=36, d=8), seed=i)
        layout = dataclasses.replace(layout, audio_saliency=saliency)
        kept = count_kept(layout, plain.plan(layout).keep)["video_kept"]
        assert kept == lbyl[i][1]
