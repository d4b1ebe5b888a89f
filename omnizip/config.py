"""OmniZip hyper-parameters as one validated, frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["offline", "streaming"]
SaliencyVariant = Literal["global", "block"]
StreamAudioScope = Literal["trailing", "window"]
ScoreDtype = Literal["float32", "bfloat16"]
VisionBudget = Literal["off", "audio"]
VisionBudgetAxes = Literal["temporal", "spatial", "both"]


@dataclass(frozen=True)
class OmniZipConfig:
    """Hyper-parameters of OmniZip and of the baselines that share its budget.

    Ratios are fractions *removed*. Defaults are the paper's 45 % operating point
    (``rho_audio=0.3, rho_video=0.6``); the 35 % point is ``0.4 / 0.7``.

    Attributes:
        rho_audio: audio pruning ratio of the salient stage (``ρ_a``): the top ``1 - ρ_a`` audio
            tokens by saliency are kept outright.
        rho_video: global video pruning ratio (``ρ_v``), the budget the per-window ratios average to.
        g: maximum number of pooled audio tokens merged into each anchor (``G``); 0 disables anchors.
        anchor_ratio: anchors as a fraction of all audio tokens (``c``, "contextual_ratio").
        rho_min: lower bound of the per-window video pruning ratio.
        rho_max: upper bound of the per-window video pruning ratio.
        knn_k: neighbourhood size of the DPC-kNN density (capped at ``P - 1``).
        mode: ``offline`` (reference semantics over the whole clip) or ``streaming`` (one window at a
            time plus an online budget controller).
        saliency: ``global`` (softmax over the whole clip, as the reference) or ``block`` (inside each
            2-s encoder block, what the encoder computes; the only one a stream can use).
        controller_horizon: number of windows over which the streaming controller keeps the achieved
            video retention on target.
        seed: seed of the randomised baselines.
        controller_tolerance: largest allowed gap (as a fraction, 0.02 = 2 points) between the achieved
            video retention over any ``controller_horizon`` consecutive windows and ``1 - rho_video``
            (streaming mode, see :mod:`omnizip.budget`).
        stream_audio_scope: how streaming OmniZip sizes each window's salient audio set: ``trailing``
            (top ``1 - rho_audio`` of the saliencies of this window and the previous
            ``controller_horizon - 1`` windows, so the retention score varies with content) or
            ``window`` (top ``1 - rho_audio`` of the window alone, a constant retention score).
        score_dtype: dtype of OmniZip's similarity scores (audio-anchor and cross-modal cosines, ISTC's
            DPC-kNN and temporal cosines): ``float32`` (default; the embeddings are upcast, so the masks
            do not depend on the model dtype) or ``bfloat16`` (the reference's arithmetic with a bf16
            model: scores rounded to bf16, so near-ties resolve as the reference resolves them).
            Merge weights and the budget arithmetic stay float32.
        vision_budget: ``off`` (default: the vision tower encodes every frame at full size) or
            ``audio`` ("listen before you look", streaming mode only): the window's audio is encoded
            first, its video keep count is decided from it, and the vision tower encodes only a grid
            that can hold that count (fewer grid steps and/or a lower resolution, see
            :mod:`omnizip.vision_budget`); ISTC prunes the rest.
        vision_budget_axes: which reductions ``vision_budget="audio"`` may use: ``temporal`` (skip the
            most static frames: fewer grid steps), ``spatial`` (a lower resolution) or ``both``.
        vision_budget_headroom: encoded video tokens per kept token at least (``>= 1``): what ISTC
            still chooses from.
    """

    rho_audio: float = 0.3
    rho_video: float = 0.6
    g: int = 3
    anchor_ratio: float = 0.05
    rho_min: float = 0.35
    rho_max: float = 0.75
    knn_k: int = 5
    mode: Mode = "offline"
    saliency: SaliencyVariant = "global"
    controller_horizon: int = 30
    seed: int = 0
    controller_tolerance: float = 0.02
    stream_audio_scope: StreamAudioScope = "trailing"
    score_dtype: ScoreDtype = "float32"
    vision_budget: VisionBudget = "off"
    vision_budget_axes: VisionBudgetAxes = "both"
    vision_budget_headroom: float = 1.25

    def __post_init__(self) -> None:
        for name in ("rho_audio", "rho_video", "anchor_ratio", "rho_min", "rho_max"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.rho_min > self.rho_max:
            raise ValueError(f"rho_min ({self.rho_min}) must not exceed rho_max ({self.rho_max})")
        if self.g < 0:
            raise ValueError(f"g must be >= 0, got {self.g}")
        if self.knn_k < 1:
            raise ValueError(f"knn_k must be >= 1, got {self.knn_k}")
        if self.mode not in ("offline", "streaming"):
            raise ValueError(f"mode must be 'offline' or 'streaming', got {self.mode!r}")
        if self.saliency not in ("global", "block"):
            raise ValueError(f"saliency must be 'global' or 'block', got {self.saliency!r}")
        if self.controller_horizon < 1:
            raise ValueError(f"controller_horizon must be >= 1, got {self.controller_horizon}")
        if not 0.0 < self.controller_tolerance < 1.0:
            raise ValueError(f"controller_tolerance must be in (0, 1), got {self.controller_tolerance}")
        if self.stream_audio_scope not in ("trailing", "window"):
            raise ValueError(
                f"stream_audio_scope must be 'trailing' or 'window', got {self.stream_audio_scope!r}"
            )

        if self.score_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"score_dtype must be 'float32' or 'bfloat16', got {self.score_dtype!r}")
        if self.vision_budget not in ("off", "audio"):
            raise ValueError(f"vision_budget must be 'off' or 'audio', got {self.vision_budget!r}")
        if self.vision_budget_axes not in ("temporal", "spatial", "both"):
            raise ValueError(
                f"vision_budget_axes must be 'temporal', 'spatial' or 'both', got {self.vision_budget_axes!r}"
            )
        if not self.vision_budget_headroom >= 1.0:
            raise ValueError(f"vision_budget_headroom must be >= 1, got {self.vision_budget_headroom}")

    @property
    def nominal_retention(self) -> float:
        """Nominal kept fraction of A/V tokens at the paper's 50 audio : 288 video per window."""
        audio_keep = min(1.0, 1.0 - self.rho_audio + (self.anchor_ratio if self.g > 0 else 0.0))
        return (audio_keep * 50 + (1.0 - self.rho_video) * 288) / 338
