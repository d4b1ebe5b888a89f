"""Case table: every registered compressor (and both OmniZip modes) with its budget rule.

Adding a method = one row here; ``test_invariants.py`` runs every row through the same checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from omnizip import KeepPlan, Modality, OmniZipConfig, TokenLayout
from omnizip.audio import nominal_audio_keep
from omnizip.budget import frame_keep_count


@dataclass(frozen=True)
class Case:
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    budget: str = "nominal"  # nominal | identity | omnizip_offline | omnizip_streaming

    @property
    def id(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))
        return f"{self.method}[{extra}]" if extra else self.method

    def config(self, **more: Any) -> OmniZipConfig:
        return OmniZipConfig(**{**self.overrides, **more})


CASES = [
    Case("identity", budget="identity"),
    Case("random"),
    Case("random", {"mode": "streaming", "seed": 7}),
    Case("uniform"),
    Case("uniform", {"mode": "streaming"}),
    Case("dycoke"),
    Case("dycoke", {"mode": "streaming", "rho_audio": 0.4, "rho_video": 0.7}),
    Case("omnizip", budget="omnizip_offline"),
    Case("omnizip", {"rho_audio": 0.4, "rho_video": 0.7, "g": 15}, budget="omnizip_offline"),
    Case("omnizip", {"g": 0}, budget="omnizip_offline"),
    Case("omnizip", {"mode": "streaming"}, budget="omnizip_streaming"),
    Case("omnizip", {"mode": "streaming", "stream_audio_scope": "window"}, budget="omnizip_streaming"),
    Case("omnizip-lbyl", {"mode": "streaming"}, budget="omnizip_streaming"),
]


def _per_chunk(layout: TokenLayout, keep: torch.Tensor, modality: Modality) -> tuple[list[int], list[int]]:
    """(kept, total) per chunk for one modality."""
    sel = layout.modality == modality
    n_chunks = int(layout.chunk_id.max()) + 1 if bool((layout.chunk_id >= 0).any()) else 0
    total = torch.bincount(layout.chunk_id[sel], minlength=n_chunks).tolist() if n_chunks else []
    kept = torch.bincount(layout.chunk_id[sel & keep], minlength=n_chunks).tolist() if n_chunks else []
    return kept, total


def _frames_per_chunk(layout: TokenLayout) -> tuple[list[int], int]:
    sel = layout.modality == Modality.VIDEO
    n_chunks = int(layout.chunk_id.max()) + 1 if bool((layout.chunk_id >= 0).any()) else 0
    if not bool(sel.any()):
        return [0] * n_chunks, 0
    fid = layout.frame_id[sel]
    ch = layout.chunk_id[sel]
    frames = torch.unique(fid)
    p = int(sel.sum()) // int(frames.numel())
    frame_chunk = torch.stack([ch[fid == f][0] for f in frames])
    return torch.bincount(frame_chunk, minlength=n_chunks).tolist(), p


def check_budget(case: Case, config: OmniZipConfig, layout: TokenLayout, plan: KeepPlan) -> None:
    """Assert the plan keeps what the method's budget rule says (within rounding)."""
    keep = plan.keep
    a_kept, a_total = _per_chunk(layout, keep, Modality.AUDIO)
    v_kept, v_total = _per_chunk(layout, keep, Modality.VIDEO)
    frames, p = _frames_per_chunk(layout)
    n_audio = sum(a_total)
    per_frame = frame_keep_count(p, config.rho_video) if p else 0
    if case.budget == "identity":
        assert bool(keep.all())
        return
    if case.budget == "nominal":
        if config.mode == "streaming":
            assert a_kept == [nominal_audio_keep(n, config.rho_audio, config.anchor_ratio, config.g) for n in a_total]
        else:
            assert sum(a_kept) == nominal_audio_keep(n_audio, config.rho_audio, config.anchor_ratio, config.g)
        assert v_kept == [per_frame * f for f in frames]
        return
    ratios = plan.chunk_video_ratio.tolist()
    if case.budget == "omnizip_offline":
        assert sum(a_kept) == nominal_audio_keep(n_audio, config.rho_audio, config.anchor_ratio, config.g)
        for c, (kept, total) in enumerate(zip(v_kept, v_total, strict=True)):
            if total == 0:
                assert math.isnan(ratios[c])
                continue
            # Every frame keeps floor(P (1 - r)); the plan reports r in float32, hence the slack.
            assert kept % frames[c] == 0
            kappa = kept // frames[c]
            assert p * (1 - ratios[c]) - 1 - 1e-4 < kappa <= p * (1 - ratios[c]) + 1e-4
            if a_total[c] == 0:
                assert ratios[c] == torch.tensor(config.rho_video, dtype=torch.float32).item()
            else:
                assert config.rho_min - 1e-6 <= ratios[c] <= config.rho_max + 1e-6
        return
    assert case.budget == "omnizip_streaming"
    for kept, total in zip(a_kept, a_total, strict=True):
        if config.stream_audio_scope == "window":
            assert kept == nominal_audio_keep(total, config.rho_audio, config.anchor_ratio, config.g)
        else:
            assert 0 <= kept <= total
    for c, (kept, total) in enumerate(zip(v_kept, v_total, strict=True)):
        if total == 0:
            continue
        assert kept == round(total * (1.0 - ratios[c]))
        lo = math.floor((1 - config.rho_max) * total + 1e-9)
        hi = math.ceil((1 - config.rho_min) * total - 1e-9)
        assert lo <= kept <= hi
