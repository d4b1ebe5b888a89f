"""Argument groups, value types and config resolution shared by the ``omnizip`` subcommands.

Every subcommand takes the same model flags (``--model --device --dtype --attn``), ``--config``
(a YAML file or a preset name shipped in :mod:`omnizip_stream.presets`) and ``key=value`` overrides
of :class:`~omnizip_stream.config.StreamConfig`. :func:`resolve_config` merges them in one order:
the subcommand's base, the preset, the overrides, then the explicit flags; every value is validated
before any model is loaded, and a flag that does nothing for the chosen method is refused.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from omnizip.adapters.loading import TINY_MODELS

TINY_NOTICE = (
    "note: --model {model} has RANDOM weights, so its answers are meaningless tokens; the pipeline, "
    "token accounting and timings are real. For real answers pass a checkpoint: --model Qwen/Qwen2.5-Omni-7B "
    "(or -3B, or a local folder; download it on a machine with internet: "
    "`huggingface-cli download Qwen/Qwen2.5-Omni-7B --local-dir ./Qwen2.5-Omni-7B`) and run on a GPU (--device cuda)."
)

# Compression keys each built-in method reads (the budget of random/dycoke counts anchors by anchor_ratio
# only; G, the merge size, and the saliency variant change nothing for them; uniform has no density
# ratios or controller). ``mode`` is fixed by the command, so it is never refused here.
_COMPRESSION_FIELDS = ("rho_audio", "rho_video", "g", "anchor_ratio", "saliency", "knn_k", "score_dtype", "rho_min",
                       "rho_max", "controller_horizon", "controller_tolerance", "stream_audio_scope")
METHOD_FIELDS: dict[str, frozenset[str]] = {
    "identity": frozenset(),
    "random": frozenset({"rho_audio", "rho_video", "anchor_ratio"}),
    "dycoke": frozenset({"rho_audio", "rho_video", "anchor_ratio"}),
    "uniform": frozenset({"rho_audio", "rho_video", "g", "anchor_ratio", "saliency", "knn_k", "score_dtype"}),
    "omnizip": frozenset(_COMPRESSION_FIELDS),
}

# flag dest -> StreamConfig key, for the flags that set a config value.
FLAG_KEYS = {
    "model": "model", "device": "device", "dtype": "dtype", "attn": "attn", "method": "method",
    "rho_audio": "rho_audio", "rho_video": "rho_video", "g": "g", "anchor_ratio": "anchor_ratio",
    "saliency": "saliency", "video_max_pixels": "video_max_pixels", "max_new_tokens": "max_new_tokens",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default (unless it is None/False or already in the text); keeps the example's layout."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (exit code 2), like every other user error."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        """Print ``prog: error: message (see prog --help)`` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def finite_float(text: str) -> float:
    """Argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """Argparse type: a finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def int_range(low: int, high: int) -> Any:
    """Argparse type: a whole number in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value

    parse.__name__ = "int"
    return parse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model --device --dtype --attn`` (default: the config's; the built-in default is ``tiny``)."""
    group = parser.add_argument_group("model (default: the --config preset's, else tiny on auto/auto/sdpa)")
    group.add_argument("--model", default=None,
                       help="tiny | tiny-qwen3 | small | a hub id (Qwen/Qwen2.5-Omni-7B) | a local checkpoint folder")
    group.add_argument("--device", default=None, help="auto (cuda when present, else cpu), cpu, cuda, cuda:N")
    group.add_argument("--dtype", default=None, help="auto (bf16 on cuda, fp32 on cpu), float32, bfloat16, float16")
    group.add_argument("--attn", default=None, help="attention backend: sdpa, eager, flash_attention_2")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config NAME|FILE`` and the ``key=value`` overrides."""
    from omnizip_stream.presets import available_presets

    parser.add_argument("--config", default=None, metavar="PRESET|FILE",
                        help=f"a YAML file or a shipped preset: {', '.join(available_presets())}")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides applied after --config, e.g. rho_video=0.7 cache_max_tokens=8192")


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """``--method --rho-audio --rho-video --g --anchor-ratio`` (default: the config's)."""
    group = parser.add_argument_group("compression (default: the --config preset's, else omnizip at the 45% point)")
    group.add_argument("--method", default=None, help="identity | omnizip | random | uniform | dycoke")
    group.add_argument("--rho-audio", type=finite_float, default=None,
                       help="audio pruning ratio (0.3 = the 45%% setting, 0.4 = 35%%)")
    group.add_argument("--rho-video", type=finite_float, default=None,
                       help="video pruning ratio (0.6 = the 45%% setting, 0.7 = 35%%)")
    group.add_argument("--g", type=int, default=None,
                       help="audio tokens merged per anchor (3; 15 on audio-centric tasks); omnizip/uniform only")
    group.add_argument("--anchor-ratio", type=finite_float, default=None, help="anchors as a fraction of audio tokens")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def check_method_fields(method: str, given: dict[str, str]) -> None:
    """Refuse settings that do nothing for ``method``; ``given`` maps each config key to how it was set.

    Raises:
        ValueError: one line naming the setting and the methods it applies to.
    """
    used = METHOD_FIELDS.get(method)
    if used is None:  # a method registered by a plugin: its fields are unknown
        return
    for key, how in given.items():
        if key in _COMPRESSION_FIELDS and key not in used:
            users = ", ".join(m for m, fields in METHOD_FIELDS.items() if key in fields)
            raise ValueError(f"{how} does nothing for method {method!r} (it applies to {users}); remove it")


def resolve_config(args: argparse.Namespace, base: Any = None) -> Any:
    """The :class:`StreamConfig` of a subcommand: ``base``, ``--config``, ``key=value``, then explicit flags.

    Raises:
        UserError: a bad preset, key, value or range, or a flag that does nothing for the method.
    """
    from omnizip_stream.cli import UserError
    from omnizip_stream.config import canonical_key, config_from_mapping, load_config, parse_overrides

    try:
        overrides: dict[str, Any] = dict(parse_overrides(list(getattr(args, "overrides", None) or [])))
        given = {canonical_key(key) or key: f"{key}={value}" for key, value in overrides.items()}
        for dest, key in FLAG_KEYS.items():
            value = getattr(args, dest, None)
            if value is not None:  # the flag wins over the same key given as key=value (or an alias of it)
                overrides = {k: v for k, v in overrides.items() if (canonical_key(k) or k) != key}
                overrides[key] = value
                given[key] = _flag(dest)
        config = config_from_mapping(overrides, load_config(getattr(args, "config", None), base=base))
        check_method_fields(config.method, given)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return config


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
