"""The device contract of omnizip/ (omnizip.device), checked on the CPU with a simulated CUDA device.

Every method of the case table and the streaming compressor is planned and applied under
``DeviceAudit(simulate="cuda", strict=True)``: inputs pretend to live on ``cuda:0``, a factory inside
omnizip/ without ``device=`` fails, and so does any op that mixes a real-CPU tensor with a pretending
one (where CUDA would raise). The audit itself is shown to catch today's kind of bug.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from cases import CASES, Case
from omnizip_synth import Spec, make_layout

from omnizip import OmniZipConfig, TokenLayout, apply_plan, gather_kept, make_compressor
from omnizip.device import DeviceAudit, DeviceContractError
from omnizip.saliency import audio_saliency, pool_saliency
from omnizip.sequence import compress_sequence

SPEC = Spec(chunks=((6, 2), (5, 2), (0, 2), (4, 0), (7, 2)), p=4, d=8, text_between=True)
PLAN_FIELDS = ("keep", "merge_dst", "merge_src", "merge_weight", "chunk_video_ratio", "chunk_audio_retention")
CUDA = torch.device("cuda", 0)


def _place(audit: DeviceAudit, layout: TokenLayout) -> TokenLayout:
    names = ("embeds", "modality", "chunk_id", "frame_id", "audio_saliency", "positions")
    return dataclasses.replace(
        layout, **{n: audit.place(getattr(layout, n)) for n in names if getattr(layout, n) is not None}
    )


def _plan_on_simulated_cuda(case: Case, layout: TokenLayout, config: OmniZipConfig) -> None:
    audit = DeviceAudit(simulate="cuda", strict=True)
    with audit:
        placed = _place(audit, layout)
        plan = make_compressor(case.method, config).plan(placed)
        for name in PLAN_FIELDS:
            assert getattr(plan, name).device == CUDA, f"plan.{name} left the layout's device"
        merged = apply_plan(placed.embeds, plan)
        embeds, positions, kept_index = gather_kept(placed, plan)
        assert merged.device == CUDA and embeds.device == CUDA and kept_index.device == CUDA
        assert positions is not None and positions.device == CUDA
    assert audit.violations == []


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("saliency", [True, False], ids=["saliency", "no-saliency"])
def test_every_method_stays_on_the_inputs_device(case: Case, saliency: bool) -> None:
    layout = make_layout(dataclasses.replace(SPEC, saliency=saliency), seed=3, dtype=torch.bfloat16)
    _plan_on_simulated_cuda(case, layout, case.config())


def test_streaming_compressor_keeps_state_on_the_device_across_windows() -> None:
    audit = DeviceAudit(simulate="cuda", strict=True)
    comp = make_compressor("omnizip", OmniZipConfig(mode="streaming", controller_horizon=3))
    window = Spec(chunks=((5, 2),), p=4, d=8)
    with audit:
        for i in range(4):
            plan = comp.plan(_place(audit, make_layout(window, seed=i, t0_s=2.0 * i)))
            assert plan.keep.device == CUDA and plan.merge_weight.device == CUDA
    assert audit.violations == []


def test_saliency_and_sequence_entry_points_stay_on_the_device() -> None:
    audit = DeviceAudit(simulate="cuda", strict=True)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(10, 2, 4, generator=gen), torch.randn(10, 2, 4, generator=gen)
    ids = torch.tensor([0, 7, 7, 7, 7, 5, 5, 5, 0])
    emb = torch.randn(9, 8, generator=gen)
    with audit:
        s = audio_saliency(audit.place(q), audit.place(k), block_lengths=[4, 6], variant="block")
        pooled = pool_saliency(s)
        assert s.device == CUDA and pooled.device == CUDA
        out, keep = compress_sequence(
            audit.place(emb), audit.place(ids), audit.place(torch.rand(3, generator=gen)),
            audio_token_id=5, video_token_id=7, video_grid_thw=torch.tensor([[1, 4, 4]]),
            config=OmniZipConfig(),
        )
        assert out.device == CUDA and keep.device == CUDA
    assert audit.violations == []


# ---------------------------------------------------------------------- the audit catches the bugs
def test_audit_fails_on_a_factory_without_device_inside_omnizip() -> None:
    # Today's plan.py bug: merged rows were accumulated in torch.zeros(...) on the CPU.
    audit = DeviceAudit(simulate="cuda", strict=True, package_dir=__file__.rsplit("/", 1)[0])
    x = torch.randn(4, 3)
    with audit, pytest.raises(DeviceContractError, match="torch.zeros without device="):
        torch.zeros(4, 3).index_add_(0, torch.arange(4, device=x.device), audit.place(x))


def test_audit_fails_on_an_op_mixing_devices() -> None:
    # Today's audio.py bug: best = torch.full(...) on the CPU, then torch.maximum(best, cuda_scores, out=best).
    audit = DeviceAudit(simulate="cuda", strict=True, package_dir="/nonexistent")
    scores = torch.randn(5)
    with audit:
        on_gpu = audit.place(scores)
        best = torch.full((5,), -torch.inf)  # no device: really on the CPU
        with pytest.raises(DeviceContractError, match=r"maximum mixes devices \['cpu', 'cuda:0'\]"):
            torch.maximum(best, on_gpu, out=best)


def test_audit_lets_a_derived_device_through_and_propagates_it() -> None:
    audit = DeviceAudit(simulate="cuda", strict=True, package_dir=__file__.rsplit("/", 1)[0])
    x = audit.place(torch.randn(3))
    with audit:
        y = torch.zeros(3, device=x.device) + x.sort().values
        z = torch.zeros_like(x).to(torch.float64)
        assert x.device == CUDA and y.device == CUDA and z.device == CUDA
        assert y.cpu().device == torch.device("cpu")
    assert audit.violations == []


def test_audit_counts_host_syncs_only_on_the_accelerator() -> None:
    audit = DeviceAudit(simulate="cuda")
    with audit:
        host = torch.arange(6)
        host.tolist(), int(host[0]), bool(host.any())  # CPU: no sync
        dev = audit.place(torch.arange(6))
        dev.tolist(), int(dev[0]), float(dev[1]), bool(dev.any()), dev[2].item()
        torch.nonzero(dev > 2), dev[dev > 2], torch.unique(dev)
    assert audit.syncs.explicit == 5
    assert audit.syncs.implicit == 3
    assert sum(audit.syncs.sites.values()) == 8


# ---------------------------------------------------------------------- host syncs per window
def _bench_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_compress.py"
    spec = importlib.util.spec_from_file_location("bench_compress_for_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_host_syncs_per_window_stay_few_and_out_of_token_loops() -> None:
    # 7B width (D = 3584), 2-s windows of 50 audio + 2 x 144 video tokens, as scripts/bench_compress.py.
    bench = _bench_module()
    report = bench.count_host_syncs(3, torch.bfloat16, OmniZipConfig())
    assert report["measured_on"].startswith("simulated cuda")
    stream, offline = report["streaming_per_window"], report["offline_per_window"]
    # Measured: 19.7 per streaming window (20 once the audio history is warm), 21 per 3-window offline clip. Any
    # per-token sync would add hundreds.
    assert 0 < stream["total"] <= 22
    assert 0 < offline["total"] * 3 <= 24
    assert all(n <= 3 * 3 for n in stream["sites"].values())  # no site syncs more than 3 times a window


def test_bench_compress_refuses_cuda_without_a_gpu() -> None:
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_compress.py"
    proc = subprocess.run([sys.executable, str(script), "--device", "cuda", "--out", "/dev/null"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--device cuda needs" in proc.stderr
