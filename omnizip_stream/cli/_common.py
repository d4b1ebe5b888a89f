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


def add_broker_port_argument(parser: argparse.ArgumentParser) -> None:
    """``--broker-port``: the TCP port of the embedded broker (``demo``, ``serve-mqtt`` without ``--broker``)."""
    parser.add_argument("--broker-port", type=int, default=None, metavar="PORT",
                        help="port of the embedded MQTT broker on 127.0.0.1 (default: a free port)")


def check_broker_port(port: int | None, broker: str | None = None) -> None:
    """Raise UserError for a ``--broker-port`` out of 1..65535, in use, or combined with ``--broker``.

    Checked before the model loads (the broker itself re-checks when it starts).
    """
    from omnizip_stream.cli import UserError

    if port is None:
        return
    if broker is not None:
        raise UserError("--broker-port sets the embedded broker's port; it cannot be combined with --broker")
    if not 1 <= port <= 65535:
        raise UserError(f"--broker-port must be 1..65535, not {port}")
    try:
        from omnizip_stream.query.broker import port_is_free
    except ImportError:  # the [mqtt] extra is not installed: the run says so
        return
    if not port_is_free("127.0.0.1", port):
        raise UserError(f"--broker-port {port}: the port is in use on 127.0.0.1 (choose another, or omit it)")


def tiny_notice(model: str) -> str | None:
    """The random-weights notice when ``model`` is a tiny test model, else None."""
    return TINY_NOTICE.format(model=model) if model in TINY_MODELS else None
