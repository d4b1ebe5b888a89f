"""Qwen2.5-Omni thinker adapter: the only module that touches Qwen2.5-Omni classes.

Uses the public thinker API only: ``get_audio_features``, ``get_video_features``, the text model
``language_model(inputs_embeds=..., position_ids=..., past_key_values=...)`` and ``lm_head``; the audio
saliency comes from forward hooks on the last audio-encoder layer (:class:`QKCapture`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from omnizip.adapters.base import AVCursor, ModelSpec
from omnizip.adapters.capture import QKCapture
from omnizip.adapters.thinker import ThinkerAdapter
from omnizip.adapters.tmrope import AVTokens, qwen2_5_av_tokens
from omnizip.preprocess import AudioPreprocessConfig, patchify_video, resize_frames
from omnizip.saliency import audio_saliency, pool_saliency

logger = logging.getLogger(__name__)

FAMILY = "qwen2_5_omni"
DEFAULT_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)


class Qwen2_5OmniAdapter(ThinkerAdapter):
    """Adapter around a ``Qwen2_5OmniThinkerForConditionalGeneration``.

    Args:
        thinker: the thinker module (eval mode).
        tokenizer: the checkpoint's tokenizer (or the offline tiny one).
        model_name: what to call the model in reports.
        device: where the model lives.
        dtype: the model's compute dtype.
        video_max_pixels: pixel budget per frame (default 128*28*28, the OmniZip paper's setting).
        system_prompt: default system prompt (Qwen's own by default).
    """

    shared_special_positions = True

    def __init__(
        self,
        thinker: Any,
        tokenizer: Any,
        *,
        model_name: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        video_max_pixels: int | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    ) -> None:
        super().__init__(
            thinker, tokenizer, model_name=model_name, device=device, dtype=dtype, system_prompt=system_prompt
        )
        cfg = thinker.config
        vcfg = cfg.vision_config
        self.vision_cfg = self._vision_config(FAMILY, video_max_pixels)
        self.audio_cfg = AudioPreprocessConfig.for_family(FAMILY)
        self.spec = ModelSpec(
            family=FAMILY,
            position_id_per_seconds=float(cfg.position_id_per_seconds),
            seconds_per_chunk=float(cfg.seconds_per_chunk),
            exact_window_s=float(cfg.audio_config.n_window * 2 / 100),
            audio_tokens_per_s=25.0,
            fps=self.vision_cfg.fps,
            temporal_patch_size=int(vcfg.temporal_patch_size),
            max_positions=int(self.text_config.max_position_embeddings),
            hidden_size=int(self.text_config.hidden_size),
        )

    def _encode_audio(
        self, audio: np.ndarray, saliency: str | None, cursor: AVCursor, stream: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, float | None]:
        """``[n]`` float32 16 kHz -> features ``[N_a, D]``, saliency ``[N_a]`` (25 tokens/s), mel max."""
        features, mask, mel_max = self._log_mel(audio, cursor, stream)
        core = self.thinker.model
        attn = core.audio_tower.layers[-1].self_attn
        with QKCapture(attn) as cap:
            out = core.get_audio_features(
                features.to(self.device, self.dtype), feature_attention_mask=mask.to(self.device)
            )
        feats = out.last_hidden_state
        if saliency is None:
            return feats, None, mel_max
        if cap.q is None or cap.k is None:
            raise RuntimeError("audio saliency hooks did not fire")
        n_heads = attn.num_heads
        t = cap.q.shape[0]
        q = cap.q.view(t, n_heads, -1)
        k = cap.k.view(t, n_heads, -1)
        blocks = cap.block_lengths() if saliency == "block" else None
        s_enc = audio_saliency(q, k, block_lengths=blocks, variant="block" if saliency == "block" else "global")
        s = pool_saliency(s_enc, [t])
        if s.shape[0] != feats.shape[0]:
            raise RuntimeError(f"saliency has {s.shape[0]} scores for {feats.shape[0]} audio tokens")
        return feats, s, mel_max

    def _encode_video(self, frames: np.ndarray) -> tuple[torch.Tensor, tuple[int, int, int], dict[str, Any]]:
        """``[F, H, W, 3]`` uint8 -> features ``[N_v, D]`` (t, row, col order) and the grid."""
        pixels, grid_thw = patchify_video(resize_frames(frames, self.vision_cfg), self.vision_cfg)
        core = self.thinker.model
        out = core.get_video_features(pixels.to(self.device, self.dtype), grid_thw.to(self.device))
        feats = torch.cat(list(out.pooler_output), dim=0)
        t, h, w = (int(x) for x in grid_thw[0].tolist())
        return feats, (t, h, w), {}

    def _av_tokens(
        self, n_audio: int, grid_thw: tuple[int, int, int] | None, cursor: AVCursor, interleave: bool,
        second_per_grid: float,
    ) -> AVTokens:
        cfg = self.thinker.config
        return qwen2_5_av_tokens(
            n_audio,
            grid_thw,
            base=cursor.base,
            first_audio=cursor.audio_tokens,
            first_grid=cursor.grids,
            spatial_merge_size=cfg.vision_config.spatial_merge_size,
            second_per_grid=second_per_grid,
            position_id_per_seconds=cfg.position_id_per_seconds,
            seconds_per_chunk=cfg.seconds_per_chunk,
            interleave=interleave,
        )
