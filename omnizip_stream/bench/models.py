"""Models the benchmarks run: the tiny test thinkers, the 7B-width ``small`` config, or a checkpoint.

``small`` is :func:`omnizip.testing.small_qwen2_5_omni`: random weights at the real Qwen2.5-Omni-7B
widths (LLM hidden 3584, 28/4 heads, ffn 18944; audio d 1280; vision width 1280) with 2 LLM layers,
2 audio layers and 2 vision blocks. Its timings scale like the real model's per layer; answers are
noise. Building it takes ~15 s and 2.3 GiB in fp32.
"""

from __future__ import annotations

import logging
from typing import Any

from omnizip.adapters.base import ModelLoadError
from omnizip.adapters.loading import TINY_MODELS, load_adapter, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

SMALL_MODEL = "small"
RANDOM_MODELS = (*TINY_MODELS, SMALL_MODEL)


def load_bench_adapter(
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    attn: str = "sdpa",
    seed: int = 0,
    small_layers: int = 2,
    video_max_pixels: int | None = None,
) -> Any:
    """Load the adapter of a benchmark model.

    Args:
        model: ``tiny``, ``tiny-qwen3``, ``small`` (7B widths, random) or a hub id / checkpoint folder.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        dtype: ``auto`` (bf16 on CUDA, fp32 on CPU), ``float32``, ``bfloat16``, ``float16``.
        attn: attention backend (``sdpa``, ``eager``, ``flash_attention_2``).
        seed: weight seed of the random models.
        small_layers: LLM layers of ``small``.
        video_max_pixels: per-frame pixel budget (None: the family's paper setting, 128*28*28).

    Returns:
        A :class:`~omnizip.adapters.thinker.ThinkerAdapter`.

    Raises:
        ModelLoadError: one-line, actionable (missing weights, no CUDA, bad dtype ...).
    """
    if model != SMALL_MODEL:
        return load_adapter(model, device=device, dtype=dtype, attn=attn, seed=seed,
                            video_max_pixels=video_max_pixels)
    from omnizip import testing
    from omnizip.adapters.loading import _wrap  # load_adapter("small") builds 2 layers; this allows any count

    if attn != "sdpa":
        raise ModelLoadError("the small random config is built with sdpa attention only")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    logger.info("building the small 7B-width random config (%d LLM layers, ~15 s)", small_layers)
    bundle = testing.small_qwen2_5_omni(seed=seed, num_layers=small_layers, dtype=dt)
    thinker = bundle.thinker.to(dev)
    kwargs: dict[str, Any] = {"model_name": SMALL_MODEL, "device": dev, "dtype": dt,
                              "video_max_pixels": video_max_pixels}
    return _wrap(bundle.family, thinker, bundle.tokenizer, kwargs)


def model_info(adapter: Any, model: str) -> dict[str, Any]:
    """What a result file says about the model: name, random or not, sizes, dtype, device."""
    tc = adapter.text_config
    thinker = getattr(adapter, "thinker", None)
    params = sum(p.numel() for p in thinker.parameters()) if thinker is not None else None
    return {
        "model": model,
        "random_weights": model in RANDOM_MODELS,
        "family": adapter.spec.family,
        "parameters": params,
        "llm_layers": tc.num_hidden_layers,
        "hidden_size": tc.hidden_size,
        "kv_heads": tc.num_key_value_heads,
        "dtype": str(adapter.dtype).replace("torch.", ""),
        "device": str(adapter.device),
        "max_positions": adapter.spec.max_positions,
    }
