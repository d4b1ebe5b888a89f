"""Qwen2.5-Omni thinker adapter: the only module that touches Qwen2.5-Omni classes.

Uses the public thinker API only: ``get_audio_features``, ``get_video_features``, the text model
``language_model(inputs_embeds=..., position_ids=..., past_key_values=...)`` and ``lm_head``; the audio
saliency comes from forward hooks on the last audio-encoder layer (:class:`QKCapture`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from omnizip.adapters.base import AVCursor, ModelSpec
from omnizip.adapters.thinker import ThinkerAdapter
from omnizip.adapters.tmrope import AVTokens, qwen2_5_av_tokens
from omnizip.preprocess import AudioPreprocessConfig
from omnizip.saliency import pool_saliency

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

    def _audio_pack_key(self, n_mel_frames: int) -> int:
        """Any windows share a call (one key for all).

        The tower zeroes the padded frames of each chunk after its first conv and attends per chunk,
        so a chunk encodes the same whatever length the call pads it to.
        """
        return 0

    def _token_saliency(self, encoder_saliency: torch.Tensor) -> torch.Tensor:
        """Encoder positions (50/s) -> LLM audio tokens (25/s), as the tower's ``AvgPool1d(2, 2)``."""
        return pool_saliency(encoder_saliency, [int(encoder_saliency.shape[0])])

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
