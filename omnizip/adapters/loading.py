"""Load an omni thinker (thinker only, no talker) from a hub id, a local folder, or ``tiny``.

``tiny`` / ``tiny-qwen3`` / ``small`` build random-weight models from configs (no download; answers are noise).
A hub id or folder holding a full Qwen2.5-Omni / Qwen3-Omni checkpoint loads only the thinker's
weights (the talker and token2wav weights are skipped), so a 7B Qwen2.5-Omni needs ~18 GB in bf16.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from omnizip.adapters.base import ModelLoadError
from omnizip.adapters.thinker import ThinkerAdapter

logger = logging.getLogger(__name__)

TINY_MODELS = ("tiny", "tiny-qwen2.5", "tiny-qwen3", "small")
ATTENTION_BACKENDS = ("sdpa", "eager", "flash_attention_2")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is validated."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA, float32 on CPU; else one of float32/bfloat16/float16."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose auto, {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def _missing_weights_message(model: str, exc: BaseException) -> str:
    return (
        f"cannot load model {model!r}: it is not a local checkpoint folder and no cached copy was found "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}). On a machine with "
        f"internet run `huggingface-cli download {model} --local-dir ./{model.split('/')[-1]}` and pass "
        f"--model ./{model.split('/')[-1]}; use --model tiny to try the pipeline with random weights"
    )


def load_adapter(
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    attn: str = "sdpa",
    video_max_pixels: int | None = None,
    system_prompt: str | None = None,
    seed: int = 0,
) -> ThinkerAdapter:
    """Load a thinker and wrap it in its family's adapter.

    Args:
        model: ``tiny`` (Qwen2.5-Omni), ``tiny-qwen3``, ``small`` (random weights at 7B widths, few
            layers), a hub id (``Qwen/Qwen2.5-Omni-7B``) or a folder.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        dtype: ``auto``, ``float32``, ``bfloat16``, ``float16``.
        attn: attention backend of the text and vision models (``sdpa``, ``eager``, ``flash_attention_2``).
        video_max_pixels: per-frame pixel budget (default: the family's paper setting).
        system_prompt: override the default system prompt.
        seed: weight seed of the tiny models.

    Raises:
        ModelLoadError: with a one-line, actionable message (missing weights, unknown family ...).
    """
    if attn not in ATTENTION_BACKENDS:
        raise ModelLoadError(f"unknown attention backend {attn!r}; choose one of {', '.join(ATTENTION_BACKENDS)}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    kwargs: dict[str, Any] = {"model_name": model, "device": dev, "dtype": dt, "video_max_pixels": video_max_pixels}
    if system_prompt is not None:
        kwargs["system_prompt"] = system_prompt
    if model in TINY_MODELS:
        from omnizip import testing

        if model == "small":  # Qwen2.5-Omni-7B widths, 2 LLM layers: for CPU benchmarks (~2.3 GB fp32)
            bundle = testing.small_qwen2_5_omni(seed=seed, dtype=dt)
        elif model == "tiny-qwen3":
            bundle = testing.tiny_qwen3_omni(seed=seed)
        else:
            bundle = testing.tiny_qwen2_5_omni(seed=seed)
        thinker = bundle.thinker.to(dev, dt)
        return _wrap(bundle.family, thinker, bundle.tokenizer, kwargs)
    return _load_checkpoint(model, dev, dt, attn, kwargs)


def _wrap(family: str, thinker: torch.nn.Module, tokenizer: Any, kwargs: dict[str, Any]) -> ThinkerAdapter:
    if family == "qwen2_5_omni":
        from omnizip.adapters.qwen2_5_omni import Qwen2_5OmniAdapter

        return Qwen2_5OmniAdapter(thinker, tokenizer, **kwargs)
    if family == "qwen3_omni":
        from omnizip.adapters.qwen3_omni import Qwen3OmniAdapter

        return Qwen3OmniAdapter(thinker, tokenizer, **kwargs)
    raise ModelLoadError(f"unsupported model family {family!r}")


def _load_checkpoint(
    model: str, dev: torch.device, dt: torch.dtype, attn: str, kwargs: dict[str, Any]
) -> ThinkerAdapter:
    import transformers

    local = os.path.isdir(model)
    if not local and os.path.exists(model):
        raise ModelLoadError(f"--model {model!r} is a file; pass a checkpoint folder or a hub id")
    try:
        config = transformers.AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_missing_weights_message(model, exc)) from None
    model_type = getattr(config, "model_type", "")
    families = {
        "qwen2_5_omni": ("qwen2_5_omni", "Qwen2_5OmniThinkerForConditionalGeneration", True),
        "qwen2_5_omni_thinker": ("qwen2_5_omni", "Qwen2_5OmniThinkerForConditionalGeneration", False),
        "qwen3_omni_moe": ("qwen3_omni", "Qwen3OmniMoeThinkerForConditionalGeneration", True),
        "qwen3_omni_moe_thinker": ("qwen3_omni", "Qwen3OmniMoeThinkerForConditionalGeneration", False),
    }
    if model_type not in families:
        raise ModelLoadError(
            f"{model!r} is a {model_type or 'unknown'} checkpoint; supported: Qwen2.5-Omni and Qwen3-Omni"
        )
    family, class_name, composite = families[model_type]
    cls = getattr(transformers, class_name)
    thinker_config = config.thinker_config if composite else config
    load_kwargs: dict[str, Any] = {"config": thinker_config, "dtype": dt, "attn_implementation": attn}
    if composite:
        load_kwargs["key_mapping"] = {r"^thinker\.": ""}  # keep the thinker, skip talker/token2wav
    if dev.type == "cuda":
        load_kwargs["device_map"] = {"": dev.index or 0}
    logger.info("loading %s thinker from %s (%s, %s, attn=%s)", family, model, dev, dt, attn)
    try:
        thinker = cls.from_pretrained(model, **load_kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    except OSError as exc:
        raise ModelLoadError(_missing_weights_message(model, exc)) from None
    thinker = thinker.to(dev).eval()
    return _wrap(family, thinker, tokenizer, kwargs)
