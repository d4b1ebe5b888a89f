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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from omnizip.adapters.base import AVCursor, EncodedAV, ModelSpec
from omnizip.adapters.capture import QKCapture
from omnizip.adapters.tmrope import AUDIO_KIND, VIDEO_KIND, AVTokens
from omnizip.adapters.varlen import varlen_attention
from omnizip.preprocess import (
    AudioPreprocessConfig,
    PreparedVideo,
    VisionPreprocessConfig,
    audio_encoder_positions,
    audio_token_count,
    log_mel,
    log_mel_window,
    preprocess_video,
)
from omnizip.saliency import audio_saliency
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


@dataclass
class _VideoOut:
    features: torch.Tensor  # [N_v, D]
    grid: tuple[int, int, int]
    extras: dict[str, Any]


Stage = float | tuple[Any, Any]  # milliseconds (CPU) or a (start, end) CUDA event pair


class AVEncoding:
    """``encode_av`` / ``encode_av_batch`` of an omni thinker adapter, with the family hooks they use.

    Families implement ``_av_tokens`` and may override ``_audio_pack_key``, ``_token_saliency`` and
    ``_video_extras``.
    """

    spec: ModelSpec
    audio_cfg: AudioPreprocessConfig
    vision_cfg: VisionPreprocessConfig
    thinker: Any
    device: torch.device
    dtype: torch.dtype

    # ------------------------------------------------------------------ family hooks
    def _special(self, name: str) -> int:
        raise NotImplementedError

    def _av_tokens(
        self, n_audio: int, grid_thw: tuple[int, int, int] | None, cursor: AVCursor, interleave: bool,
        second_per_grid: float,
    ) -> AVTokens:
        raise NotImplementedError

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
