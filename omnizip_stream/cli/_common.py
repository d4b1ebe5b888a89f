"""Argument groups and messages shared by the ``omnizip`` subcommands."""

from __future__ import annotations

import argparse

from omnizip.adapters.loading import TINY_MODELS

TINY_NOTICE = (
    "note: --model {model} has RANDOM weights, so its answers are meaningless tokens; the pipeline, "
    "token accounting and timings are real. For real answers pass a checkpoint: --model Qwen/Qwen2.5-Omni-7B "
    "(or -3B, or a local folder; download it on a machine with internet: "
    "`huggingface-cli download Qwen/Qwen2.5-Omni-7B --local-dir ./Qwen2.5-Omni-7B`) and run on a GPU (--device cuda)."
)


def add_model_arguments(parser: argparse.ArgumentParser, *, default_model: str = "tiny") -> None:
    """``--model --device --dtype --attn``."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=default_model,
                       help="tiny | tiny-qwen3 | a hub id (Qwen/Qwen2.5-Omni-7B) | a local checkpoint folder")
    group.add_argument("--device", default="auto", help="auto (cuda when present, else cpu), cpu, cuda, cuda:N")
    group.add_argument("--dtype", default="auto", help="auto (bf16 on cuda, fp32 on cpu), float32, bfloat16, float16")
    group.add_argument("--attn", default="sdpa", help="attention backend: sdpa, eager, flash_attention_2")


def add_method_arguments(parser: argparse.ArgumentParser, *, default_method: str = "omnizip") -> None:
    """``--method --rho-audio --rho-video --g --anchor-ratio``."""
    group = parser.add_argument_group("compression")
    group.add_argument("--method", default=default_method,
                       help="identity | omnizip | random | uniform | dycoke (default %(default)s)")
    group.add_argument("--rho-audio", type=float, default=0.3, help="audio pruning ratio (0.3 = 45%% setting, 0.4 = 35%%)")
    group.add_argument("--rho-video", type=float, default=0.6, help="video pruning ratio (0.6 = 45%% setting, 0.7 = 35%%)")
    group.add_argument("--g", type=int, default=3, help="audio tokens merged per anchor (15 on audio-centric tasks)")
    group.add_argument("--anchor-ratio", type=float, default=0.05, help="anchors as a fraction of audio tokens")


def tiny_notice(model: str) -> str | None:
    """The random-weights notice when ``model`` is a tiny test model, else None."""
    return TINY_NOTICE.format(model=model) if model in TINY_MODELS else None
