"""Every registered method's plan on CUDA equals the CPU plan (fp32: identical; bf16: documented tolerance).

bf16 tolerance: with the default ``score_dtype="float32"`` the scores are computed in float32 on both
devices, so masks may differ only where two float32 scores are within GPU/CPU rounding of each other;
the budget (kept tokens per modality and per chunk) is identical and at most 2 % of the audio/video
tokens may change side. With ``score_dtype="bfloat16"`` the same tolerance applies.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from cases import CASES, Case
from omnizip_synth import Spec, make_layout

from omnizip import Modality, OmniZipConfig, apply_plan, gather_kept, make_compressor
from omnizip.device import DeviceAudit

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SPEC = Spec(chunks=((25, 2), (25, 2), (0, 2), (25, 2), (13, 0)), p=36, d=64, text_between=True)
BF16_MAX_CHANGED = 0.02


def _per_chunk_kept(layout, keep) -> list[list[int]]:
    out = []
    for code in (Modality.AUDIO, Modality.VIDEO):
        sel = (layout.modality == code) & keep
        out.append(torch.bincount(layout.chunk_id[sel], minlength=layout.num_chunks).tolist())
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_plan_equals_cpu_plan(case: Case, dtype: torch.dtype) -> None:
    layout = make_layout(SPEC, seed=5, dtype=dtype)
    on_gpu = layout.to("cuda")
    cpu_plan = make_compressor(case.method, case.config()).plan(layout)
    gpu_plan = make_compressor(case.method, case.config()).plan(on_gpu)
    for name in ("keep", "merge_dst", "merge_src", "merge_weight", "chunk_video_ratio", "chunk_audio_retention"):
        assert getattr(gpu_plan, name).device.type == "cuda", name
    keep_cpu, keep_gpu = cpu_plan.keep, gpu_plan.keep.cpu()
    assert _per_chunk_kept(layout, keep_cpu) == _per_chunk_kept(layout, keep_gpu)
    if dtype == torch.float32:
        assert torch.equal(keep_cpu, keep_gpu)
        assert torch.equal(cpu_plan.merge_dst, gpu_plan.merge_dst.cpu())
        assert torch.equal(cpu_plan.merge_src, gpu_plan.merge_src.cpu())
        torch.testing.assert_close(cpu_plan.merge_weight, gpu_plan.merge_weight.cpu(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            gather_kept(layout, cpu_plan)[0], gather_kept(on_gpu, gpu_plan)[0].cpu(), rtol=1e-5, atol=1e-5
        )
    else:
        av = layout.modality != Modality.TEXT
        changed = int((keep_cpu != keep_gpu)[av].sum()) / int(av.sum())
        assert changed <= BF16_MAX_CHANGED, f"{changed:.1%} of the A/V tokens changed side"
    merged = apply_plan(on_gpu.embeds, gpu_plan)
    assert merged.device.type == "cuda" and merged.dtype == dtype


@pytest.mark.parametrize("score_dtype", ["float32", "bfloat16"])
def test_cuda_streaming_omnizip_follows_the_cpu_stream(score_dtype: str) -> None:
    cfg = OmniZipConfig(mode="streaming", score_dtype=score_dtype)  # type: ignore[arg-type]
    cpu, gpu = make_compressor("omnizip", cfg), make_compressor("omnizip", cfg)
    window = Spec(chunks=((25, 2),), p=36, d=64)
    changed, total = 0, 0
    for i in range(8):
        layout = make_layout(window, seed=i, t0_s=2.0 * i, dtype=torch.bfloat16)
        a, b = cpu.plan(layout), gpu.plan(layout.to("cuda"))
        assert a.stats["audio_kept"] == b.stats["audio_kept"] and a.stats["video_kept"] == b.stats["video_kept"]
        changed += int((a.keep != b.keep.cpu()).sum())
        total += layout.num_tokens
    assert changed / total <= BF16_MAX_CHANGED


def test_host_syncs_per_window_on_cuda_match_the_simulated_count() -> None:
    """The CPU-side simulation (omnizip.device) predicts the real CUDA sync count."""
    window = Spec(chunks=((25, 2),), p=36, d=64)
    counts = []
    for simulate in (None, "cuda"):
        comp = make_compressor("omnizip", OmniZipConfig(mode="streaming"))
        audit = DeviceAudit(simulate=simulate)
        layouts = [make_layout(window, seed=i, t0_s=2.0 * i) for i in range(3)]
        if simulate is None:
            layouts = [lay.to("cuda") for lay in layouts]
        else:
            layouts = [dataclasses.replace(lay, **{k: audit.place(v) for k, v in vars(lay).items()
                                                   if isinstance(v, torch.Tensor)}) for lay in layouts]
        with audit:
            for lay in layouts:
                gather_kept(lay, comp.plan(lay))
        counts.append(audit.syncs.total)
    assert counts[0] == counts[1] > 0
