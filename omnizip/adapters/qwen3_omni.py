"""Qwen3-Omni thinker adapter: the only module that touches Qwen3-Omni classes.

Same surface as the Qwen2.5-Omni adapter (:class:`~omnizip.adapters.thinker.ThinkerAdapter`), with
the Qwen3 differences, all checked against the stock ``Qwen3OmniMoeThinkerForConditionalGeneration``:

* position ids are float32 and the two A/V opening tokens (and the two closing ones) get
  consecutive ids (the stock ``get_rope_index`` uses ``bos_len = eos_len = 2`` for audio-in-video);
* audio: 13 LLM tokens per second; the audio encoder's transformer runs directly on those tokens
  (three stride-2 convs per 1-s chunk, no pooling after it), so the last encoder layer's
  ``q_proj``/``k_proj`` see exactly the LLM audio tokens and the saliency needs no pooling; the
  encoder attends inside windows of ``n_window_infer`` mel frames (8 s), the smallest window whose
  per-window encoding equals the whole clip's;
* video: 16-px patches, mean/std 0.5; A/V tokens are merged one by one by temporal id
  (:func:`~omnizip.adapters.tmrope.qwen3_av_tokens`);
* deepstack: the vision tower also emits per-token features of a few intermediate blocks; the text
  model adds level ``i`` to the hidden states of the video tokens after decoder layer ``i``. They are
  pruned with the video keep-mask and passed as ``deepstack_visual_embeds`` / ``visual_pos_masks``
  (:meth:`Qwen3OmniAdapter.av_extras`, :meth:`Qwen3OmniAdapter._lm_kwargs`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from omnizip.adapters.base import AVCursor, EncodedAV, ModelSpec
from omnizip.adapters.thinker import ThinkerAdapter
from omnizip.adapters.tmrope import AVTokens, qwen3_av_tokens
from omnizip.preprocess import AudioPreprocessConfig
from omnizip.types import Modality

logger = logging.getLogger(__name__)

FAMILY = "qwen3_omni"
#: Temporal position ids per second of the released checkpoints (the config class default, 25, is a
#: Qwen2.5-Omni leftover; the Qwen3-Omni processor interleaves at 13).
CHECKPOINT_POSITION_ID_PER_SECONDS = 13
_MEL_FRAMES_PER_S = 100


class Qwen3OmniAdapter(ThinkerAdapter):
    """Adapter around a ``Qwen3OmniMoeThinkerForConditionalGeneration``.

    Args:
        thinker: the thinker module (eval mode).
        tokenizer: the checkpoint's tokenizer (or the offline tiny one).
        model_name: what to call the model in reports.
        device: where the model lives.
        dtype: the model's compute dtype.
        video_max_pixels: pixel budget per frame (default 128*32*32: 128 LLM tokens per grid step).
        system_prompt: default system prompt (none by default: the Qwen3-Omni template adds none).

    Raises:
        ValueError: when the vision config does not match the Qwen3-Omni preprocessing.
    """

    shared_special_positions = False
    position_dtype = torch.float32

    def __init__(
        self,
        thinker: torch.nn.Module,
        tokenizer: Any,
        *,
        model_name: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        video_max_pixels: int | None = None,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__(
            thinker, tokenizer, model_name=model_name, device=device, dtype=dtype, system_prompt=system_prompt
        )
        cfg: Any = thinker.config
        vcfg = cfg.vision_config
        acfg = cfg.audio_config
        self.vision_cfg = self._vision_config(FAMILY, video_max_pixels)
        self.audio_cfg = AudioPreprocessConfig.for_family(FAMILY, n_window=int(acfg.n_window))
        pps = float(cfg.position_id_per_seconds)
        if pps != CHECKPOINT_POSITION_ID_PER_SECONDS:
            logger.warning(
                "%s: position_id_per_seconds is %g in the config; the Qwen3-Omni checkpoints and processor use "
                "%d. Positions follow the config (as the stock model would).",
                model_name, pps, CHECKPOINT_POSITION_ID_PER_SECONDS,
            )
        chunk_frames = 2 * int(acfg.n_window)
        self.spec = ModelSpec(
            family=FAMILY,
            position_id_per_seconds=pps,
            seconds_per_chunk=self.vision_cfg.second_per_grid,
            exact_window_s=float(acfg.n_window_infer) / _MEL_FRAMES_PER_S,
            audio_tokens_per_s=13.0 * _MEL_FRAMES_PER_S / chunk_frames,
            fps=self.vision_cfg.fps,
            temporal_patch_size=int(vcfg.temporal_patch_size),
            max_positions=int(self.text_config.max_position_embeddings),
            hidden_size=int(self.text_config.hidden_size),
        )

    # ------------------------------------------------------------------ encoders
    # The audio encoder's last layer runs on the LLM audio tokens themselves, so its captured ``Q``/``K``
    # rows map one to one onto the features (no pooling: the default ``_token_saliency``); ``block``
    # saliency uses the encoder's 8-s attention windows (``cu_seqlens``). Windows pack into one audio
    # call when their longest 1-s chunk is equal (the default ``_audio_pack_key``): the tower sizes its
    # attention windows from the longest chunk of a call and its convs do not mask the padding.
    def _video_extras(self, out: Any, index: int, copy: bool) -> dict[str, Any]:
        """``{"deepstack": [levels] of [N_v, D]}`` of video ``index``, rows in the feature order."""
        levels = [level[index] for level in out.deepstack_features]
        return {"deepstack": [level.clone() for level in levels] if copy else levels}

    def _av_tokens(
        self, n_audio: int, grid_thw: tuple[int, int, int] | None, cursor: AVCursor, interleave: bool,
        second_per_grid: float,
    ) -> AVTokens:
        return qwen3_av_tokens(
            n_audio,
            grid_thw,
            base=cursor.base,
            first_audio=cursor.audio_tokens,
            first_grid=cursor.grids,
            spatial_merge_size=int(self.vision_cfg.merge_size),
            second_per_grid=second_per_grid,
            position_id_per_seconds=self.spec.position_id_per_seconds,
            interleave=interleave,
        )

    # ------------------------------------------------------------------ deepstack
    def av_extras(
        self, encoded: EncodedAV, kept_index: torch.Tensor, *, offset: int, total: int
    ) -> dict[str, Any] | None:
        """Deepstack inputs for the kept A/V tokens of ``encoded`` placed at ``offset`` in a forward of ``total``.

        Args:
            encoded: the encoded window/clip (``extras["deepstack"]``: levels of ``[N_video, D]`` in
                feature order, ``extras["video_feature_index"]``: ``[N_video]`` feature index of each
                video token in layout order).
            kept_index: ``[N']`` int64 increasing indices into ``encoded.layout`` of the kept tokens,
                in the order they appear in the forward call.
            offset: index of the first kept A/V token inside the forward call.
            total: number of embeddings ``S`` of the forward call.

        Returns:
            ``{"video_mask": bool [S], "deepstack": [levels] of [n_kept_video, D]}``, or None when
            no video token is kept (the text model then gets no deepstack arguments).
        """
        deepstack = encoded.extras.get("deepstack")
        if not deepstack:
            return None
        kept_index = kept_index.to("cpu", torch.long)
        n_kept = int(kept_index.numel())
        if offset < 0 or offset + n_kept > total:
            raise ValueError(f"{n_kept} kept tokens at offset {offset} do not fit a forward of {total}")
        is_video = encoded.layout.modality.cpu() == int(Modality.VIDEO)
        kept_is_video = is_video[kept_index]
        if not bool(kept_is_video.any()):
            return None
        video_rank = torch.cumsum(is_video.long(), 0) - 1  # layout index -> rank among video tokens
        feature_index = encoded.extras["video_feature_index"].cpu()[video_rank[kept_index[kept_is_video]]]
        mask = torch.zeros(total, dtype=torch.bool, device="cpu")  # host side, moved in _lm_kwargs
        mask[offset: offset + n_kept] = kept_is_video
        return {
            "video_mask": mask,
            "deepstack": [level[feature_index.to(level.device)] for level in deepstack],
        }

    def pack_extras(self, parts: list[tuple[int, dict[str, Any] | None]]) -> dict[str, Any] | None:
        """Deepstack inputs of chunks ``(S_i, extras_i)`` packed into one forward of ``sum S_i`` embeddings.

        The video masks are concatenated (all False for a chunk without extras) and each deepstack level
        stacks the chunks' rows in order, so row ``j`` of a level is still the ``j``-th video token.
        Returns None when no chunk holds a video token.
        """
        masks: list[torch.Tensor] = []
        levels: list[list[torch.Tensor]] = []
        for n, extras in parts:
            if not extras or not extras.get("deepstack"):
                masks.append(torch.zeros(n, dtype=torch.bool))
                continue
            mask = extras["video_mask"].cpu()
            if mask.shape != (n,):
                raise ValueError(f"video_mask has shape {tuple(mask.shape)}, expected [{n}]")
            if levels and len(levels) != len(extras["deepstack"]):
                raise ValueError("packed chunks carry different numbers of deepstack levels")
            levels = levels or [[] for _ in extras["deepstack"]]
            for rows, level in zip(levels, extras["deepstack"], strict=True):
                rows.append(level)
            masks.append(mask)
        if not levels:
            return None
        return {"video_mask": torch.cat(masks), "deepstack": [torch.cat(rows) for rows in levels]}

    def _lm_kwargs(self, embeds: torch.Tensor, extras: dict[str, Any] | None) -> dict[str, Any]:
        """Deepstack keyword arguments of the text model for one forward call of ``S`` embeddings.

        Returns ``deepstack_visual_embeds`` (levels of ``[n_video, D]``) and ``visual_pos_masks``
        (``[1, S]`` bool), or None for both when this forward call holds no video token.
        """
        if not extras or not extras.get("deepstack"):
            return {"deepstack_visual_embeds": None, "visual_pos_masks": None}
        mask = extras["video_mask"]
        if mask.shape != (embeds.shape[0],):
            raise ValueError(f"video_mask has shape {tuple(mask.shape)}, expected [{embeds.shape[0]}]")
        n_video = int(mask.sum())
        levels = [level.to(self.device, self.dtype) for level in extras["deepstack"]]
        if any(level.shape[0] != n_video for level in levels):
            raise ValueError(f"deepstack levels must hold {n_video} rows (one per video token in the mask)")
        return {"deepstack_visual_embeds": levels, "visual_pos_masks": mask.view(1, -1).to(self.device)}
