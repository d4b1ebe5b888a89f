"""Real checkpoints and GPUs: excluded from the default run (``-m slow`` / ``-m gpu`` to select).

``slow`` tests need a local checkpoint folder in ``OMNIZIP_CHECKPOINT`` (e.g. a download of
Qwen/Qwen2.5-Omni-3B); ``gpu`` tests need CUDA. Both skip with the reason when those are missing.
"""

from __future__ import annotations

import os

import pytest
import torch
from omni_helpers import clip_windows, synthetic_clip

from omnizip import OmniZipConfig, make_compressor
from omnizip.adapters.loading import load_adapter
from omnizip.qa import answer_clip, prepare_clip_prompt

CHECKPOINT = os.environ.get("OMNIZIP_CHECKPOINT")
needs_checkpoint = pytest.mark.skipif(not CHECKPOINT, reason="set OMNIZIP_CHECKPOINT to a local checkpoint folder")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.slow
@needs_checkpoint
def test_real_checkpoint_answers_and_compresses():
    adapter = load_adapter(CHECKPOINT, device="auto", dtype="auto")
    wav, frames = synthetic_clip(10.0)
    full = answer_clip(adapter, wav, frames, "What color is the moving pattern?", make_compressor("identity"),
                       max_new_tokens=16)
    zipped = answer_clip(adapter, wav, frames, "What color is the moving pattern?",
                         make_compressor("omnizip", OmniZipConfig(rho_audio=0.4, rho_video=0.7)), max_new_tokens=16)
    assert full.answer and zipped.answer
    assert zipped.tokens_kept < 0.5 * zipped.tokens_total


@pytest.mark.gpu
@needs_cuda
def test_tiny_model_on_cuda_bf16_matches_fp32_cpu(tiny25):
    gpu = load_adapter("tiny", device="cuda", dtype="bfloat16")
    cpu = load_adapter("tiny", device="cpu", dtype="float32")
    wav, frames = synthetic_clip(4.0)
    logits = []
    for adapter in (cpu, gpu):
        prompt = prepare_clip_prompt(adapter, wav, frames, "What?", make_compressor("identity"))
        logits.append(adapter.forward(prompt.embeds, prompt.positions, adapter.new_cache()).cpu())
    assert (logits[0] - logits[1]).abs().max().item() < 0.1  # bf16 rounding only


@pytest.mark.gpu
@needs_cuda
async def test_stream_session_on_cuda():
    from omnizip_stream.config import StreamConfig
    from omnizip_stream.session import StreamSession

    wav, frames = synthetic_clip(8.0)
    async with StreamSession.from_config(StreamConfig(model="tiny", device="cuda", dtype="bfloat16")) as session:
        for window in clip_windows(wav, frames):
            await session.push_window(window)
        await session.drain()
        answer = await session.ask("What happened?", max_new_tokens=4)
    assert answer.window_range == (0, 3)
