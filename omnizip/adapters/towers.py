"""The tower calls of A/V encoding: one audio-tower and one vision-tower call for many requests.

:class:`EncoderTowers` is the half of :class:`~omnizip.adapters.encoding.AVEncoding` that runs the
model's encoders: the audio tower on requests packed as ``feature_attention_mask`` rows (with the
last layer's ``Q``/``K`` captured for the saliency), the vision tower on the requests' patches back to
back (one ``grid_thw`` row each), both with equal-length attention chunks batched
(:mod:`omnizip.adapters.varlen`); plus the frames' preprocessing (:meth:`EncoderTowers.prepare_video`,
also run ahead of the model thread) and the stage clock (CUDA events on a GPU).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from omnizip.adapters.base import ModelSpec
from omnizip.adapters.capture import QKCapture
from omnizip.adapters.varlen import varlen_attention
from omnizip.preprocess import (
    PreparedVideo,
    VisionPreprocessConfig,
    audio_encoder_positions,
    audio_token_count,
    preprocess_video,
)
from omnizip.saliency import audio_saliency


@dataclass
class _VideoOut:
    features: torch.Tensor  # [N_v, D]
    grid: tuple[int, int, int]
    extras: dict[str, Any]


Stage = float | tuple[Any, Any]  # milliseconds (CPU) or a (start, end) CUDA event pair


class EncoderTowers:
    """Tower calls of an omni thinker adapter (the family hooks they use are ``AVEncoding``'s)."""

    spec: ModelSpec
    vision_cfg: VisionPreprocessConfig
    thinker: Any
    device: torch.device
    dtype: torch.dtype

    # ------------------------------------------------------------------ family hooks
    def _audio_pack_key(self, n_mel_frames: int) -> int:
        """Requests whose keys are equal may share one audio-tower call and encode as they do alone.

        Default: the longest chunk of ``2 * n_window`` mel frames. The tower pads every chunk of a call
        to the longest one and (Qwen3) sizes its attention windows from it, so only requests with the
        same longest chunk pack exactly.
        """
        return min(n_mel_frames, 2 * int(self.thinker.model.audio_tower.n_window))

    def _token_saliency(self, encoder_saliency: torch.Tensor) -> torch.Tensor:
        """``[T]`` saliency per encoder position of one request -> ``[N_a]`` per LLM audio token."""
        return encoder_saliency

    def _video_extras(self, out: Any, index: int, copy: bool) -> dict[str, Any]:
        """Family extras of video ``index`` of a vision-tower call (``copy``: detach from the packed output)."""
        return {}

    # ------------------------------------------------------------------ tower calls
    def _audio_tower(
        self, mels: list[tuple[torch.Tensor, torch.Tensor]], saliency: list[str | None]
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Log-mels ``[1, 128, T_i]`` (+ masks ``[1, T_i]``) -> per request features ``[N_i, D]``, saliency ``[N_i]``.

        One tower call per distinct :meth:`_audio_pack_key` (usually one for all).
        """
        groups: dict[int, list[int]] = {}
        for i, (feats, _) in enumerate(mels):
            groups.setdefault(self._audio_pack_key(int(feats.shape[-1])), []).append(i)
        out: list[tuple[torch.Tensor, torch.Tensor | None]] = [(torch.empty(0), None)] * len(mels)
        for members in groups.values():
            done = self._audio_call([mels[i] for i in members], [saliency[i] for i in members])
            for i, result in zip(members, done, strict=True):
                out[i] = result
        return out

    def _audio_call(
        self, mels: list[tuple[torch.Tensor, torch.Tensor]], saliency: list[str | None]
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """One audio-tower call on requests packed as the rows of ``feature_attention_mask``."""
        if len(mels) == 1:
            features, mask = mels[0]
        else:
            t_max = max(int(f.shape[-1]) for f, _ in mels)
            features = mels[0][0].new_zeros(len(mels), mels[0][0].shape[1], t_max)
            mask = torch.zeros(len(mels), t_max, dtype=torch.long)
            for row, (f, m) in enumerate(mels):
                features[row, :, : f.shape[-1]] = f[0]
                mask[row, : m.shape[-1]] = m[0]
        n_frames = [int(m.sum()) for _, m in mels]
        core = self.thinker.model
        n_window = int(core.audio_tower.n_window)
        attn = core.audio_tower.layers[-1].self_attn
        with QKCapture(attn) as cap, varlen_attention(core.audio_tower.config):
            out = core.get_audio_features(features.to(self.device, self.dtype), feature_attention_mask=mask.to(self.device))
        hidden = out.last_hidden_state
        counts = [audio_token_count(n, self.spec.family, n_window=n_window) for n in n_frames]
        if sum(counts) != hidden.shape[0]:
            raise RuntimeError(f"the audio tower gave {hidden.shape[0]} tokens for requests of {counts}")
        feats = list(hidden.split(counts))
        if all(s is None for s in saliency):
            return [(f, None) for f in feats]
        rows = cap.split([audio_encoder_positions(n, self.spec.family, n_window=n_window) for n in n_frames])
        results: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for f, variant, (q, k, blocks) in zip(feats, saliency, rows, strict=True):
            if variant is None:
                results.append((f, None))
                continue
            t = q.shape[0]
            s_enc = audio_saliency(q.view(t, attn.num_heads, -1), k.view(t, attn.num_heads, -1),
                                   block_lengths=blocks if variant == "block" else None,
                                   variant="block" if variant == "block" else "global")
            s = self._token_saliency(s_enc)
            if s.shape[0] != f.shape[0]:
                raise RuntimeError(f"saliency has {s.shape[0]} scores for {f.shape[0]} audio tokens")
            results.append((f, s))
        return results

    def prepare_video(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``uint8 [F, H, W, 3]`` frames -> the vision tower's ``(pixel_values [N, 3*tp*p*p], grid_thw [1, 3])``.

        The CPU half of video encoding (resize to the pixel budget, normalise, patchify) under the
        adapter's preprocessing; thread-safe, so it can run off the model thread (wrap the result in a
        :class:`~omnizip.preprocess.PreparedVideo` with ``self.vision_cfg`` for :class:`EncodeRequest`).
        """
        return preprocess_video(frames, self.vision_cfg)

    def _vision_tower(
        self, clips: list[np.ndarray], cfgs: list[VisionPreprocessConfig] | None = None,
        prepared: Sequence[PreparedVideo | None] | None = None,
    ) -> list[_VideoOut]:
        """Frames ``[F_i, H_i, W_i, 3]`` uint8 of each request -> features ``[N_i, D]`` (t, row, col order).

        One vision-tower call: the requests' patches back to back, one ``grid_thw`` row each (the tower
        attends inside each frame, so sizes may differ). ``cfgs``: each clip's preprocessing (its pixel
        budget), default the adapter's; ``prepared``: patches made ahead, used where they match.
        """
        cfgs = cfgs or [self.vision_cfg] * len(clips)
        prepared = prepared or [None] * len(clips)
        patches = [p.patches() if p is not None and p.matches(f, c) else preprocess_video(f, c)
                   for f, c, p in zip(clips, cfgs, prepared, strict=True)]
        pixels = torch.cat([p for p, _ in patches]) if len(patches) > 1 else patches[0][0]
        grid_thw = torch.cat([g for _, g in patches]) if len(patches) > 1 else patches[0][1]
        core = self.thinker.model
        with varlen_attention(core.visual.config):
            out = core.get_video_features(pixels.to(self.device, self.dtype), grid_thw.to(self.device))
        copy = len(clips) > 1  # extras outlive the call: views of a packed output would keep all of it alive
        results = []
        for i, (_, g) in enumerate(patches):
            feats = out.pooler_output[i]
            t, h, w = (int(x) for x in g[0].tolist())
            results.append(_VideoOut(feats, (t, h, w), self._video_extras(out, i, copy)))
        return results

    # ------------------------------------------------------------------ timing
    def _mark(self) -> Any:
        """A stage boundary: a recorded CUDA event on a GPU (no synchronize), else ``perf_counter``."""
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _stage_time(self, start: Any) -> Stage:
        """A stage's time: milliseconds now on the CPU, an event pair (read later) on CUDA."""
        if isinstance(start, float):
            return (time.perf_counter() - start) * 1e3
        return (start, self._mark())
