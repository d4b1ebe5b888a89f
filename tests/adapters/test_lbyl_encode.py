"""Listen before you look through the real encode path (tiny random Qwen2.5-Omni / Qwen3-Omni thinkers).

The vision tower encodes the grid the audio budget chose; the kept tokens' positions are what the
stock ``get_rope_index`` gives for that grid; with no plan (the option off) nothing changes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from omnizip import OmniZipConfig, make_compressor
from omnizip.adapters.base import AVCursor
from omnizip.plan import gather_kept
from omnizip.preprocess import AudioPreprocessConfig, log_mel
from omnizip.vision_budget import VisionBudgetInput, VisionPlan, choose_vision_plan

from .conftest import synthetic_clip

QUESTION = "What is happening?"


def _window(seconds: float = 2.0, seed: int = 4):
    wav, frames = synthetic_clip(seconds, seed=seed, size=(112, 112))
    frames[2] = frames[1]  # a static pair: the temporal axis drops it
    return wav, frames


def _stock_positions(adapter, bundle, wav: np.ndarray, encoded, plan: VisionPlan, fps: float) -> tuple[torch.Tensor, int]:
    """Stock ``get_rope_index`` of the prompt ``prefix, open, block, close, suffix`` with the encoded grid."""
    parts = adapter.prompt_parts(QUESTION)
    open_ids, close_ids = adapter.open_ids(True, True), adapter.close_ids(True, True)
    ids = parts.prefix + open_ids + encoded.token_ids.tolist() + close_ids + parts.suffix
    input_ids = torch.tensor([ids])
    _, mask = log_mel(wav, AudioPreprocessConfig.for_family(bundle.family))
    spg = adapter.spec.temporal_patch_size / (fps * plan.fps_scale)
    pos, _ = bundle.thinker.model.get_rope_index(
        input_ids, None, torch.tensor([plan.grid_thw]), torch.ones_like(input_ids), True, mask.sum(-1),
        torch.tensor([spg]),
    )
    return pos[:, 0], len(parts.prefix) + len(open_ids)


@pytest.mark.parametrize("family", ["qwen2_5", "qwen3"])
@pytest.mark.parametrize("axes", ["temporal", "spatial", "both"])
def test_kept_positions_equal_stock_rope_index_of_the_encoded_grid(adapter25, tiny25, adapter3, tiny3, family, axes):
    adapter, bundle = (adapter25, tiny25) if family == "qwen2_5" else (adapter3, tiny3)
    seconds = 2.0 if family == "qwen2_5" else 8.0  # one model-exact window each
    wav, frames = _window(seconds)
    comp = make_compressor("omnizip-lbyl", OmniZipConfig(rho_audio=0.4, rho_video=0.7, mode="streaming",
                                                          vision_budget_axes=axes))
    parts = adapter.prompt_parts(QUESTION)
    open_pos = adapter.special_positions(len(adapter.open_ids(True, True)), len(parts.prefix))
    encoded = adapter.encode_av(wav, frames, AVCursor(base=int(open_pos[-1]) + 1), saliency="block", stream=True,
                                vision_plan=comp.vision_planner())
    plan = encoded.extras["vision_plan"]
    full_t = len(frames) // 2
    vcfg = adapter.vision_cfg
    h, w = vcfg.resized_size(112, 112)
    assert plan.patches < full_t * (h // vcfg.patch_size) * (w // vcfg.patch_size)  # the tower saw less
    assert encoded.extras["video_patches"] == plan.patches
    if axes == "temporal":
        assert plan.grid_thw[0] < full_t and 2 not in plan.frame_index
    keep = comp.plan(encoded.layout)
    _, kept_pos, kept_index = gather_kept(encoded.layout, keep)
    n_video_kept = int((encoded.layout.modality[kept_index] == 2).sum())
    assert n_video_kept == plan.keep_tokens
    stock, offset = _stock_positions(adapter, bundle, wav, encoded, plan, adapter.spec.fps)
    assert torch.equal(encoded.layout.positions, stock[:, offset:offset + encoded.layout.num_tokens])
    assert torch.equal(kept_pos, stock[:, offset + kept_index])
    assert encoded.next_cursor.grids == full_t  # the stream's clock advances by the window, not the grid


def test_a_full_grid_plan_is_bit_identical_to_no_plan(adapter25):
    """The hook path itself changes nothing: a plan that keeps the full grid encodes what no plan encodes."""
    wav, frames = _window()

    def full(inp: VisionBudgetInput) -> VisionPlan:
        return choose_vision_plan(inp, inp.nominal_tokens)

    cursor = AVCursor(base=7, audio_tokens=50, grids=2)
    plain = adapter25.encode_av(wav, frames, cursor, saliency="block", stream=True)
    hooked = adapter25.encode_av(wav, frames, cursor, saliency="block", stream=True, vision_plan=full)
    assert hooked.extras["vision_plan"].patches == plain.extras["video_patches"]
    for name in ("embeds", "modality", "chunk_id", "frame_id", "audio_saliency", "positions"):
        assert torch.equal(getattr(plain.layout, name), getattr(hooked.layout, name)), name
    assert torch.equal(plain.token_ids, hooked.token_ids)
    assert plain.close_position == hooked.close_position
    assert dataclasses.astuple(plain.next_cursor)[:3] == dataclasses.astuple(hooked.next_cursor)[:3]


def test_stream_engine_with_the_option_off_passes_no_hook(adapter25, monkeypatch):
    """``omnizip`` (vision_budget off, the default) encodes exactly as before: no hook in the request."""
    from omni_helpers import clip_windows

    from omnizip_stream.config import StreamConfig
    from omnizip_stream.engine import StreamEngine

    calls: list[dict] = []
    original = adapter25.encode_av_batch

    def spy(requests):
        calls.extend({"vision_plan": r.vision_plan} if r.vision_plan is not None else {} for r in requests)
        return original(requests)

    monkeypatch.setattr(adapter25, "encode_av_batch", spy)
    wav, frames = synthetic_clip(4.0, seed=2)
    for method, hooked in (("omnizip", False), ("omnizip-lbyl", True)):
        calls.clear()
        engine = StreamEngine(adapter25, StreamConfig().replace(method=method, rho_audio=0.4, rho_video=0.7))
        reports = [engine.ingest(w) for w in clip_windows(wav, frames)]
        assert [("vision_plan" in kw) for kw in calls] == [hooked] * len(reports)
        assert all(r.video_tokens == reports[0].video_tokens for r in reports)  # the full grid's count either way
        assert all(r.timings_ms["video_patches"] > 0 for r in reports)


def test_the_config_key_vision_budget_audio_turns_it_on():
    from omnizip_stream.config import StreamConfig, config_from_mapping

    assert StreamConfig().compression.vision_budget == "off"
    cfg = config_from_mapping({"method": "omnizip", "vision_budget": "audio"})
    assert cfg.compression.vision_budget == "audio" and cfg.compression.mode == "streaming"
    assert make_compressor(cfg.method, cfg.compression).vision_planner() is not None


def test_batched_encode_of_planned_windows_equals_one_at_a_time(adapter25):
    """The server's packed ``encode_av_many``: each stream's plan is its own, the grids are what it encodes alone."""
    from omnizip.adapters.batch_encode import EncodeRequest, encode_av_many

    def requests():
        out = []
        for seed, axes in ((4, "temporal"), (5, "spatial")):
            wav, frames = _window(seed=seed)
            comp = make_compressor("omnizip-lbyl", OmniZipConfig(rho_audio=0.4, rho_video=0.7, mode="streaming",
                                                                  vision_budget_axes=axes))
            out.append(EncodeRequest(wav, frames, AVCursor(base=7), vision_plan=comp.vision_planner()))
        return out

    packed = encode_av_many(adapter25, requests(), batched=True)
    alone = encode_av_many(adapter25, requests(), batched=False)
    for a, b in zip(packed, alone, strict=True):
        assert a.extras["vision_plan"] == b.extras["vision_plan"]
        assert torch.equal(a.layout.positions, b.layout.positions) and torch.equal(a.token_ids, b.token_ids)
        assert torch.allclose(a.layout.embeds, b.layout.embeds, atol=1e-4)
    assert packed[0].extras["vision_plan"].grid_thw[0] == 1 and packed[1].extras["vision_plan"].grid_thw[0] == 2
