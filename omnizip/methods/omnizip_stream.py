"""Streaming OmniZip: one chunk at a time, each seeing only itself and the past.

Per chunk (2-s window), in stream order:

1. **Salient audio.** ``stream_audio_scope="trailing"`` (default): the chunk's salient tokens are
   its members of the top ``round((1 - rho_audio) * n)`` saliencies over the chunk and the previous
   ``controller_horizon - 1`` chunks with audio (ties go to the older token), i.e. the reference's
   global top-k restricted to what a stream has seen. The count therefore varies with content and so
   does the retention score ``S_w``, which is what lets audio steer the video budget.
   ``"window"``: top ``round((1 - rho_audio) * n_w)`` of the chunk alone, a constant ``S_w`` for
   equal chunks (the video budget then degenerates to a fixed ratio).
2. **Anchors and merge** inside the chunk: ``round(anchor_ratio * n_w)`` anchors, cross-modal scores
   against the chunk's own video (against its anchors when it has none), top-``G`` softmax merge.
3. **Video budget**: :class:`~omnizip.budget.StreamingBudgetController` maps ``S_w`` to an exact keep
   count (same linear map, online re-normalisation, error feedback, sliding-window guarantee).
4. **ISTC** on the chunk's frames with the count spread evenly over them (cosines computed from
   Gram matrices and row norms instead of normalised copies: same values up to float rounding).

The audio history and the controller persist across :meth:`plan` calls until :meth:`reset`.
``rho_video = 0`` disables video pruning.

Listen before you look (``vision_budget="audio"``): :meth:`vision_planner` is the adapter's hook
between the audio and the vision tower (:class:`~omnizip.adapters.encoding.EncodeRequest`
``vision_plan``). It predicts the window's retention score from its audio saliency alone (the
salient count of step 1 plus the anchors of step 2, which depend on no video), asks the controller
for the keep count of the *full* grid (:meth:`StreamingBudgetController.propose`, no state change)
and picks the grid to encode (:func:`omnizip.vision_budget.choose_vision_plan`). The following
:meth:`plan` of that window accounts the window as one controller step with the full grid's token
count, capped at the tokens actually encoded, and spreads the count over the encoded frames. With one
chunk per window (2-s Qwen2.5-Omni windows) the predicted and actual scores are the same number,
so the count is the one plain streaming OmniZip would have chosen.
"""

from __future__ import annotations

from collections import deque

import torch

from omnizip.audio import anchor_count, salient_count, salient_mask, top_indices
from omnizip.budget import StreamingBudgetController, spread_over_frames
from omnizip.config import OmniZipConfig
from omnizip.methods._layout import LayoutIndex, build_plan, index_layout
from omnizip.methods._stages import (
    cat_merges,
    checked_saliency,
    offset_selection,
    rows_of,
    run_istc,
    score_dtype,
    windowed_audio_stage,
)
from omnizip.types import KeepPlan, TokenLayout
from omnizip.vision_budget import VisionBudgetInput, VisionPlan, VisionPlanner, choose_vision_plan


class OmniZipStreamingCompressor:
    """Streaming OmniZip with the online budget controller (stateful until :meth:`reset`).

    Args:
        config: hyper-parameters (``controller_horizon``, ``controller_tolerance``,
            ``stream_audio_scope`` are used here).
    """

    name = "omnizip"
    streaming = True

    def __init__(self, config: OmniZipConfig) -> None:
        self.config = config
        self.controller = StreamingBudgetController(
            config.rho_video, config.rho_min, config.rho_max, config.controller_horizon, config.controller_tolerance
        )
        self._history: deque[torch.Tensor] = deque(maxlen=max(0, config.controller_horizon - 1))
        self._vision_plan: VisionPlan | None = None

    def reset(self) -> None:
        """Forget the stream: audio history and controller state."""
        self.controller.reset()
        self._history.clear()
        self._vision_plan = None

    def vision_planner(self) -> VisionPlanner | None:
        """The encode hook of ``vision_budget="audio"`` (None when the option is off)."""
        return self.plan_vision if self.config.vision_budget == "audio" else None

    def predicted_retention(self, saliency: torch.Tensor | None, n_audio: int) -> float | None:
        """A window's retention score from its audio alone: salient tokens plus anchors over ``n_audio``.

        Args:
            saliency: ``[n_audio]`` saliency of the window's audio tokens, or None.
            n_audio: the window's LLM audio tokens (0: no audio, returns None).
        """
        if n_audio <= 0:
            return None
        k = self._salient_count(saliency, n_audio)
        if self.config.g > 0 and k < n_audio:
            k += min(anchor_count(n_audio, self.config.anchor_ratio), n_audio - k)
        return float(torch.tensor(k, dtype=torch.float32) / n_audio)  # float32 like plan()

    def plan_vision(self, inp: VisionBudgetInput) -> VisionPlan:
        """Choose the grid the window's vision tower encodes; remembered for the window's :meth:`plan`."""
        cfg = self.config
        retention = self.predicted_retention(inp.audio_saliency, inp.n_audio)
        nominal = inp.nominal_tokens
        keep = nominal if cfg.rho_video == 0.0 else self.controller.propose(retention, nominal)
        plan = choose_vision_plan(inp, keep, axes=cfg.vision_budget_axes, headroom=cfg.vision_budget_headroom,
                                  retention=retention)
        self._vision_plan = plan
        return plan

    def _salient_count(self, saliency: torch.Tensor | None, n: int) -> int:
        """Salient tokens of a chunk of ``n`` audio tokens (trailing or window top-k)."""
        if saliency is None or self.config.stream_audio_scope == "window" or not self._history:
            return salient_count(n, self.config.rho_audio)
        pool = torch.cat([*self._history, saliency])
        top = top_indices(pool, salient_count(int(pool.numel()), self.config.rho_audio))
        return int((top >= pool.numel() - n).sum())

    def _window_video_budget(
        self, vision_plan: VisionPlan, index: LayoutIndex, audio_keep: torch.Tensor, ratios: list[float]
    ) -> tuple[list[int], list[float]]:
        """One controller step for a window encoded under ``vision_plan`` (full-grid token count).

        Returns:
            Per encoded frame keep counts and the chunks' video ratios (of the full grid).
        """
        n_audio = int(audio_keep.numel())
        s_w = float(audio_keep.sum().to(torch.float32) / n_audio) if n_audio else None
        nominal, encoded = vision_plan.nominal_tokens, int(index.video_idx.numel())
        if self.config.rho_video == 0.0:
            kept = encoded
        else:
            kept = self.controller.step(s_w, nominal, max_keep=encoded)
        ratio = 1.0 - kept / nominal
        with_video = [n > 0 for n in index.video_counts]
        return spread_over_frames(kept, index.num_frames), [ratio if v else r for v, r in zip(with_video, ratios, strict=True)]

    def plan(self, layout: TokenLayout) -> KeepPlan:
        """Plan the layout's chunks in order, updating the stream state.

        Args:
            layout: one or more whole interleave chunks of the stream (chunk ids from 0).

        Returns:
            The plan; ``chunk_video_ratio`` holds each chunk's achieved video ratio.
        """
        cfg = self.config
        index = index_layout(layout)
        vision_plan, self._vision_plan = self._vision_plan, None
        if vision_plan is not None and vision_plan.grid_thw[0] != index.num_frames:
            vision_plan = None  # not the window the plan was made for: plan it as usual
        saliency = checked_saliency(layout)
        # A stream window is small: convert it to the score dtype once instead of in every stage.
        work = layout.embeds.to(score_dtype(cfg))
        # Norms of the video tokens, shared by the cross-modal score and ISTC.
        video_norms = rows_of(work, index.video_idx).norm(dim=-1)
        dev = layout.embeds.device
        audio_keep = torch.zeros(int(index.audio_idx.numel()), dtype=torch.bool, device=dev)
        merges = []
        retention: list[float] = []
        ratios: list[float] = []
        frame_counts: list[int] = []
        for c in range(index.num_chunks):
            a0, na = index.audio_starts[c], index.audio_counts[c]
            s_w: float | None = None
            if na:
                sal = None if saliency is None else saliency[a0 : a0 + na]
                k = self._salient_count(sal, na)
                sel = windowed_audio_stage(
                    layout, index, cfg, c, salient_mask(sal, na, k, device=dev), embeds=work, video_norms=video_norms
                )
                if sal is not None and self._history.maxlen:
                    self._history.append(sal.clone())
                audio_keep[a0 : a0 + na] = sel.keep
                merges.append(offset_selection(sel, a0))
                s_w = float(sel.keep.sum().to(torch.float32) / na)  # float32 like the reference; one host sync
            retention.append(float("nan") if s_w is None else s_w)
            nv = index.video_counts[c]
            if nv == 0:
                ratios.append(float("nan"))
                continue
            if vision_plan is not None:
                ratios.append(float("nan"))  # decided for the whole window below
                continue
            kept = nv if cfg.rho_video == 0.0 else self.controller.step(s_w, nv)
            ratios.append(1.0 - kept / nv)
            frame_counts.extend(spread_over_frames(kept, index.frame_counts[c]))
        if vision_plan is not None:
            frame_counts, ratios = self._window_video_budget(vision_plan, index, audio_keep, ratios)
        video_keep = None
        if index.video_idx.numel():
            counts = torch.tensor(frame_counts, dtype=torch.int64, device=dev)
            video_keep = run_istc(layout, index, counts, cfg, embeds=work, exact=False, video_norms=video_norms)
        return build_plan(
            layout,
            index,
            audio_keep=audio_keep,
            video_keep=video_keep,
            merges=cat_merges(merges),
            chunk_video_ratio=ratios,
            chunk_audio_retention=retention,
            stats={"controller_error_tokens": self.controller.cumulative_error},
        )
