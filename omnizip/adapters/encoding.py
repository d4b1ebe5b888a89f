"""Encoding A/V windows: each request's own preprocessing and layout, one call of each tower for many.

:class:`AVEncoding` is the encoding half of :class:`~omnizip.adapters.thinker.ThinkerAdapter`. The
work of one request splits into what is its own (the log-mel of its audio from its cursor, its frames'
patches, its token plan, layout, positions and next cursor) and the tower calls, which take several
requests packed: the audio tower one ``feature_attention_mask`` row per request, the vision tower one
``grid_thw`` row per request (frames of different sizes included). ``encode_av`` is the one-request
case of :meth:`AVEncoding.encode_av_batch`, so a window encodes the same alone or beside others
(fp32: within float rounding of the packed matmuls).

The audio saliency comes from the last audio layer's ``Q``/``K`` of the packed call
(:class:`~omnizip.adapters.capture.QKCapture`), cut back into each request's rows and attention blocks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from omnizip.adapters.base import AVCursor, EncodedAV
from omnizip.adapters.tmrope import AUDIO_KIND, VIDEO_KIND, AVTokens
from omnizip.adapters.towers import EncoderTowers, Stage, _VideoOut
from omnizip.preprocess import (
    AudioPreprocessConfig,
    PreparedVideo,
    log_mel,
    log_mel_window,
)
from omnizip.sequence import layout_from_ids
from omnizip.vision_budget import VisionBudgetInput, VisionPlan, VisionPlanner, plan_frames

_AUDIO_CONTEXT_SAMPLES = 400  # left context kept for the next window's log-mel (needs n_fft / 2 = 200)
_SALIENCY_VARIANTS = (None, "block", "global")


@dataclass
class EncodeRequest:
    """One window (or clip) to encode: the arguments of ``adapter.encode_av``.

    Attributes:
        audio: ``[n]`` float32 mono 16 kHz, or None / empty.
        frames: ``[F, H, W, 3]`` uint8 frames on the model's grid, or None / empty.
        cursor: where the window starts in its stream.
        saliency: audio saliency variant (``block`` / ``global``) or None.
        stream: stream-mode log-mel (left context and running floor from the cursor).
        interleave: ``use_audio_in_video`` layout.
        video_fps: the rate the frames were sampled at (default ``spec.fps``).
        vision_plan: "listen before you look" hook (:mod:`omnizip.vision_budget`), or None: called
            after the audio tower with the window's audio saliency and full video grid, it returns the
            grid the vision tower encodes (fewer steps / a smaller size); None encodes every frame.
        prepared_video: ``frames`` already resized and patchified (:meth:`AVEncoding.prepare_video`,
            e.g. on a preparation thread while the model was busy); used when it :meth:`matches
            <omnizip.preprocess.PreparedVideo.matches>` the frames the tower encodes, else ignored.
    """

    audio: np.ndarray | None
    frames: np.ndarray | None
    cursor: AVCursor
    saliency: str | None = "block"
    stream: bool = True
    interleave: bool = True
    video_fps: float | None = None
    vision_plan: VisionPlanner | None = None
    prepared_video: PreparedVideo | None = None


@dataclass
class _AudioOut:
    features: torch.Tensor  # [N_a, D]
    saliency: torch.Tensor | None  # [N_a]
    mel_max_log10: float | None


class AVEncoding(EncoderTowers):
    """``encode_av`` / ``encode_av_batch`` of an omni thinker adapter, with the family hooks they use.

    Families implement ``_av_tokens`` and may override the tower hooks ``_audio_pack_key``,
    ``_token_saliency`` and ``_video_extras`` (:class:`~omnizip.adapters.towers.EncoderTowers`).
    """

    audio_cfg: AudioPreprocessConfig

    # ------------------------------------------------------------------ family hooks
    def _special(self, name: str) -> int:
        raise NotImplementedError

    def _av_tokens(
        self, n_audio: int, grid_thw: tuple[int, int, int] | None, cursor: AVCursor, interleave: bool,
        second_per_grid: float,
    ) -> AVTokens:
        raise NotImplementedError

    # ------------------------------------------------------------------ entry points
    @torch.no_grad()
    def encode_av(
        self,
        audio: np.ndarray | None,
        frames: np.ndarray | None,
        cursor: AVCursor,
        *,
        saliency: str | None = "block",
        interleave: bool = True,
        stream: bool = False,
        video_fps: float | None = None,
        vision_plan: VisionPlanner | None = None,
    ) -> EncodedAV:
        """Encode one window (or a whole clip) into the full, uncompressed token layout.

        Args:
            audio: ``[n]`` float32 mono 16 kHz, or None / empty for no audio.
            frames: ``[F, H, W, 3]`` uint8 RGB frames sampled at ``spec.fps``, or None / empty.
            cursor: where this block starts in the stream (``AVCursor(base)`` for a clip).
            saliency: ``global`` / ``block`` audio saliency variant, or None to skip it.
            interleave: ``use_audio_in_video`` layout (ignored when one modality is missing).
            stream: compute the log-mel of a stream window (left context and running floor from the
                cursor) instead of a whole clip.
            video_fps: the rate the frames were sampled at (default ``spec.fps``); a clip whose frames
                were capped is sampled more sparsely, which stretches each grid step's time.
            vision_plan: see :class:`EncodeRequest` (listen before you look), None to encode every frame.

        Returns:
            The :class:`EncodedAV`; ``layout.embeds`` is ``[N, D]`` in the model dtype.
        """
        request = EncodeRequest(audio, frames, cursor, saliency, stream, interleave, video_fps, vision_plan)
        return self.encode_av_batch([request])[0]

    @torch.no_grad()
    def encode_av_batch(self, requests: Sequence[EncodeRequest]) -> list[EncodedAV]:
        """Encode several requests with one audio-tower and one vision-tower call.

        Each request keeps its own log-mel state, saliency, token layout, positions and next cursor:
        ``result[i]`` equals ``encode_av`` of ``requests[i]`` alone. Audio of requests whose
        :meth:`_audio_pack_key` differs goes through separate calls (Qwen3: windows shorter than
        one 1-s chunk); frames of any size share the vision call. The stage timings of a request are
        those of the calls it took part in (its latency, not its share).

        Raises:
            ValueError: a request without audio and video, or an unknown saliency variant.
        """
        audios: list[np.ndarray | None] = []
        clips: list[np.ndarray | None] = []
        for r in requests:
            audio = np.asarray(r.audio, dtype=np.float32) if r.audio is not None and len(r.audio) > 0 else None
            frames = np.asarray(r.frames) if r.frames is not None and len(r.frames) > 0 else None
            if audio is None and frames is None:
                raise ValueError("encode_av needs audio or video")
            if r.saliency not in _SALIENCY_VARIANTS:
                raise ValueError(f"saliency must be one of {_SALIENCY_VARIANTS}, got {r.saliency!r}")
            audios.append(audio)
            clips.append(frames)
        audio_at = [(i, a) for i, a in enumerate(audios) if a is not None]
        video_at = [(i, f) for i, f in enumerate(clips) if f is not None]
        audio_out: dict[int, _AudioOut] = {}
        video_out: dict[int, _VideoOut] = {}
        audio_stage: Stage | None = None
        video_stage: Stage | None = None
        if audio_at:
            t0 = self._mark()
            mels = [self._log_mel(a, requests[i].cursor, requests[i].stream) for i, a in audio_at]
            encoded = self._audio_tower([(m[0], m[1]) for m in mels], [requests[i].saliency for i, _ in audio_at])
            audio_out = {i: _AudioOut(f, s, m[2]) for (i, _), (f, s), m in zip(audio_at, encoded, mels, strict=True)}
            audio_stage = self._stage_time(t0)
        plans = {i: self._plan_vision(requests[i], f, audio_out.get(i)) for i, f in video_at
                 if requests[i].vision_plan is not None}
        if video_at:
            t0 = self._mark()
            inputs = [plan_frames(*plans[i]) if i in plans else (f, self.vision_cfg) for i, f in video_at]
            encoded_video = self._vision_tower([f for f, _ in inputs], [c for _, c in inputs],
                                               [requests[i].prepared_video for i, _ in video_at])
            video_out = {i: out for (i, _), out in zip(video_at, encoded_video, strict=True)}
            video_stage = self._stage_time(t0)
        results = []
        for i, r in enumerate(requests):
            timings = {"audio_encode_ms": 0.0, "video_encode_ms": 0.0}
            events: dict[str, tuple[Any, Any]] = {}
            for name, stage, took_part in (("audio_encode_ms", audio_stage, i in audio_out),
                                           ("video_encode_ms", video_stage, i in video_out)):
                if not took_part or stage is None:
                    continue
                if isinstance(stage, tuple):
                    events[name] = stage
                else:
                    timings[name] = stage
            plan = plans[i][1] if i in plans else None
            results.append(self._assemble(r, audios[i], audio_out.get(i), clips[i], video_out.get(i),
                                          timings, events, plan))
        return results

    # ------------------------------------------------------------------ per request
    def _log_mel(self, audio: np.ndarray, cursor: AVCursor, stream: bool) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """Log-mel ``[1, 128, T]`` + mask ``[1, T]``: whole clip, or one stream window with left context."""
        if not stream:
            feats, mask = log_mel(audio, self.audio_cfg)
            return feats, mask, None
        mel = log_mel_window(audio, cursor.audio_tail, running_max_log10=cursor.mel_max_log10, cfg=self.audio_cfg)
        return mel.input_features, mel.feature_attention_mask, mel.max_log10

    def _plan_vision(
        self, request: EncodeRequest, frames: np.ndarray, a: _AudioOut | None
    ) -> tuple[VisionBudgetInput, VisionPlan]:
        """Ask the request's ``vision_plan`` hook which grid to encode (after its audio was encoded)."""
        assert request.vision_plan is not None
        cfg, tp = self.vision_cfg, self.vision_cfg.temporal_patch_size
        h, w = cfg.resized_size(int(frames.shape[1]), int(frames.shape[2]))
        grid = (-(-int(frames.shape[0]) // tp), h // cfg.patch_size, w // cfg.patch_size)
        inp = VisionBudgetInput(
            frames=frames, grid_thw=grid, vision_cfg=cfg, audio_saliency=None if a is None else a.saliency,
            n_audio=0 if a is None else int(a.features.shape[0]), first_grid=request.cursor.grids,
        )
        return inp, request.vision_plan(inp)

    def _assemble(
        self, request: EncodeRequest, audio: np.ndarray | None, a: _AudioOut | None, frames: np.ndarray | None,
        v: _VideoOut | None, timings: dict[str, float], events: dict[str, tuple[Any, Any]],
        plan: VisionPlan | None = None,
    ) -> EncodedAV:
        """One request's token plan, layout, positions and next cursor from its encoder outputs.

        With a vision ``plan`` the positions follow the grid actually encoded (its steps stretched to
        span the window, its first step in those units); the next cursor advances by the full grid.
        """
        d, cursor = self.spec.hidden_size, request.cursor
        empty = torch.zeros(0, d, dtype=self.dtype, device=self.device)
        a_feat = a.features if a is not None else empty
        v_feat = v.features if v is not None else empty
        grid = v.grid if v is not None else None
        fps = request.video_fps or self.spec.fps
        grids_done = grid[0] if grid else 0
        token_cursor = cursor
        if plan is not None and frames is not None:
            fps *= plan.fps_scale
            grids_done = -(-len(frames) // self.spec.temporal_patch_size)
            token_cursor = dataclasses.replace(cursor, grids=plan.first_grid)
        toks = self._av_tokens(a_feat.shape[0], grid, token_cursor, request.interleave,
                               self.spec.temporal_patch_size / fps)
        # The token plan is built on the host (tmrope); it moves to the model's device once, and the
        # layout lives there entirely (see omnizip.device).
        kind = toks.kind.to(self.device)
        feature_index = toks.feature_index.to(self.device)
        is_audio = kind == AUDIO_KIND
        is_video = kind == VIDEO_KIND
        embeds = torch.empty(toks.kind.shape[0], d, dtype=self.dtype, device=self.device)
        embeds[is_audio] = a_feat[feature_index[is_audio]].to(self.dtype)
        embeds[is_video] = v_feat[feature_index[is_video]].to(self.dtype)
        saliency_in_order = None
        if a is not None and a.saliency is not None:
            # Saliency is per audio feature; the layout lists audio tokens in feature order already.
            saliency_in_order = a.saliency.to(self.device)[feature_index[is_audio]].float()
        audio_id, video_id = self._special("audio"), self._special("video")
        token_ids = torch.where(is_audio, audio_id, video_id).long()
        # Chunks and frames exactly as the reference reads a sequence (video run i pairs with audio run i).
        layout = layout_from_ids(
            embeds, token_ids, saliency_in_order, audio_token_id=audio_id, video_token_id=video_id,
            video_grid_thw=torch.tensor(grid, device="cpu") if grid is not None else None,
        )
        layout = dataclasses.replace(layout, positions=toks.positions.to(self.device))
        extras = {}
        if v is not None and "deepstack" in v.extras:
            extras["deepstack"] = v.extras["deepstack"]  # per level, video tokens in feature order
            extras["video_feature_index"] = feature_index[is_video]
        if plan is not None:
            extras["vision_plan"] = plan
        if grid is not None:
            extras["video_patches"] = grid[0] * grid[1] * grid[2]  # vision-tower patches encoded
        tail = audio[-_AUDIO_CONTEXT_SAMPLES:].copy() if audio is not None else None
        next_cursor = AVCursor(
            cursor.base, cursor.audio_tokens + int(a_feat.shape[0]), cursor.grids + grids_done, tail,
            a.mel_max_log10 if a is not None else cursor.mel_max_log10,
        )
        return EncodedAV(
            layout=layout,
            token_ids=token_ids,
            next_cursor=next_cursor,
            close_position=toks.close_position,
            extras=extras,
            audio_s=len(audio) / 16000.0 if audio is not None else 0.0,
            video_frames=len(frames) if frames is not None else 0,
            timings=timings,
            timing_events=events,
        )
