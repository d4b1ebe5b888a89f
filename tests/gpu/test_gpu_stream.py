"""The whole stream on CUDA: session with omnizip, ``omnizip infer --device cuda``, ``omnizip bench --device cuda``.

Tiny random model moved to the GPU; these are install checks (``make test-gpu``), not accuracy tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omni_helpers import clip_windows, make_media, synthetic_clip

from omnizip_stream.cli import main
from omnizip_stream.config import StreamConfig
from omnizip_stream.session import StreamSession

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

ROOT = Path(__file__).resolve().parents[2]
PIXELS = 56 * 56


async def test_streaming_session_with_omnizip_on_cuda() -> None:
    cfg = StreamConfig(model="tiny", device="cuda", method="omnizip", max_new_tokens=4, max_question_tokens=32,
                       video_max_pixels=PIXELS)
    wav, frames = synthetic_clip(8.0, seed=1)
    async with StreamSession.from_config(cfg) as session:
        assert session.adapter.device.type == "cuda"
        for w in clip_windows(wav, frames):
            await session.push_window(w)
        await session.drain()
        answer = await session.ask("What is going on?", max_new_tokens=4)
        stats = session.stats()
    assert answer.window_range == (0, 3) and 0 < answer.ttft_ms <= answer.total_ms
    assert stats["windows_ingested"] == 4 and stats["windows_failed"] == 0
    assert 0 < stats["retention_video"] < 1 and 0 < stats["retention_audio"] < 1
    assert stats["gpu_peak_mb"] is not None and stats["gpu_peak_mb"] > 0


def test_engine_stage_timings_use_cuda_events() -> None:
    from omnizip.adapters.loading import load_adapter
    from omnizip_stream.engine import StageClock, StreamEngine

    clock = StageClock(torch.device("cuda"))
    clock.mark()
    torch.ones(1024, 1024, device="cuda").matmul(torch.ones(1024, 1024, device="cuda"))
    clock.mark()
    (ms,) = clock.elapsed_ms()
    assert ms > 0
    adapter = load_adapter("tiny", device="cuda", video_max_pixels=PIXELS)
    engine = StreamEngine(adapter, StreamConfig(model="tiny", device="cuda", method="omnizip",
                                                video_max_pixels=PIXELS))
    wav, frames = synthetic_clip(4.0, seed=2)
    reports = [engine.ingest(w) for w in clip_windows(wav, frames)]
    for r in reports:
        t = r.timings_ms
        assert t["encode_ms"] > 0 and t["compress_ms"] > 0 and t["prefill_ms"] > 0
        assert 0 < t["audio_encode_ms"] <= t["encode_ms"] and 0 < t["video_encode_ms"] <= t["encode_ms"]
        assert t["total_ms"] == pytest.approx(t["encode_ms"] + t["compress_ms"] + t["prefill_ms"])
    assert engine.stats()["gpu_peak_mb"] > 0


def test_infer_on_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = make_media(tmp_path / "av.mp4", seconds=3.0)
    code = main(["infer", "--model", "tiny", "--device", "cuda", "--video", str(clip), "--question", "What moves?",
                 "--max-new-tokens", "4", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["method"] == "omnizip" and 0 < result["tokens_kept"] < result["tokens_total"]


def test_bench_quick_on_cuda(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "omnizip_stream.cli", "bench", "--device", "cuda", "--quick",
                           "--modes", "full,omnizip-45", "--no-plots", "--out", str(tmp_path / "bench")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "bench" / "results.json").exists()


def test_bench_compress_on_cuda(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_compress.py"), "--device", "cuda",
                           "--quick", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"].startswith("cuda")
    for name in ("bfloat16", "float32"):
        assert report["results"][name]["streaming"]["2"]["ms_per_window_median"] > 0
        assert report["host_syncs"][name]["streaming_per_window"]["total"] > 0
