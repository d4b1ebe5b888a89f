"""Load an omni thinker (thinker only, no talker) from a hub id, a local folder, or ``tiny``.

``tiny`` / ``tiny-qwen3`` / ``small`` build random-weight models from configs (no download; answers are noise).
A hub id is looked up in the local Hugging Face cache only (no network, no retries: a missing model
fails at once with the download command); a folder must hold ``config.json``.
A hub id or folder holding a full Qwen2.5-Omni / Qwen3-Omni checkpoint loads only the thinker's
weights (the talker and token2wav weights are skipped), so a 7B Qwen2.5-Omni needs ~18 GB in bf16.
"""

from __future__ import annotations

import glob
import logging
import os
import re
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


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_EXAMPLE_ID = "Qwen/Qwen2.5-Omni-7B"


def _download_advice(repo_id: str, folder: str) -> str:
    return f"`huggingface-cli download {repo_id} --local-dir {folder}` on a machine with internet"


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder, read from the environment at call time."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return str(constants.HF_HUB_CACHE)


def _cached_snapshot(repo_id: str) -> str | None:
    """The local snapshot folder of ``repo_id`` when its config.json is in the hub cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(repo_id, "config.json", cache_dir=hub_cache_dir())
    except Exception:  # noqa: BLE001 - a malformed id or cache is "not cached"
        return None
    return os.path.dirname(path) if isinstance(path, str) else None


def resolve_checkpoint(model: str) -> str:
    """The local folder to load ``model`` from: the folder itself, or a hub id's cached snapshot.

    Never touches the network: a hub id that is not in the local cache fails at once (no retries).

    Raises:
        ModelLoadError: one line that fits the case (a file, a missing folder, a folder without
            config.json, a hub id not in the cache, something that is neither).
    """
    local = os.path.expanduser(model)
    if os.path.isdir(local):
        if os.path.isfile(os.path.join(local, "config.json")):
            return local
        inner = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(glob.escape(local), "*", "config.json")))
        if inner:
            raise ModelLoadError(
                f"cannot load model {model!r}: the folder has no config.json, but {inner[0]!r} has one; "
                f"pass --model {inner[0]}"
            )
        raise ModelLoadError(
            f"cannot load model {model!r}: the folder has no config.json, so it is not a checkpoint (an unfinished "
            f"download?); fill it with {_download_advice(_EXAMPLE_ID, local)} (or the checkpoint you want)"
        )
    if os.path.exists(local):
        raise ModelLoadError(f"--model {model!r} is a file; pass a checkpoint folder or a hub id")
    if model.startswith((".", "~", os.sep)) or (os.altsep and os.altsep in model):
        base = os.path.basename(os.path.normpath(local))
        repo_id = f"Qwen/{base}" if base.lower().startswith("qwen") else _EXAMPLE_ID
        raise ModelLoadError(
            f"cannot load model {model!r}: no such folder; create it with {_download_advice(repo_id, model)}"
        )
    if not _HUB_ID.match(model):
        raise ModelLoadError(
            f"cannot load model {model!r}: no such folder, and it is not a hub id (ORG/NAME); use tiny, "
            f"{_EXAMPLE_ID} or a checkpoint folder"
        )
    snapshot = _cached_snapshot(model)
    if snapshot is None:
        name = "./" + model.split("/")[-1]
        raise ModelLoadError(
            f"cannot load model {model!r}: it is not in the local Hugging Face cache ({hub_cache_dir()}) and "
            f"weights are never downloaded here; run {_download_advice(model, name)}, then pass --model {name} "
            "(or --model tiny to try the pipeline with random weights)"
        )
    return snapshot


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


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


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

    folder = resolve_checkpoint(model)
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model {model!r}: its config.json cannot be read "
                             f"({type(exc).__name__}: {_first_line(exc)})") from None
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
        thinker = cls.from_pretrained(folder, local_files_only=True, **load_kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load model {model!r}: {folder} has a config.json but its weights or tokenizer files are "
            f"missing or unreadable ({_first_line(exc)}); complete it with "
            f"{_download_advice(model if _HUB_ID.match(model) else _EXAMPLE_ID, folder)}"
        ) from None
    thinker = thinker.to(dev).eval()
    return _wrap(family, thinker, tokenizer, kwargs)
