"""Apply a :class:`~omnizip.types.KeepPlan`: merge anchors, then gather the kept tokens (ToMe style).

Planning and applying are separate so that plans can be tested without embeddings. Nothing here
modifies its inputs.
"""

from __future__ import annotations

import torch

from omnizip.types import KeepPlan, TokenLayout


def apply_plan(embeds: torch.Tensor, plan: KeepPlan) -> torch.Tensor:
    """Merge the plan's sources into their anchors (spec Stage B.6), full length.

    Each anchor ``a`` becomes ``(x_a + sum_m w_m x_m) / (1 + sum_m w_m)`` over its sources ``m``
    (computed in float32, cast back to the input dtype; the weighted sum is accumulated in the plan's
    source order, like the reference). Dropped rows are left untouched: the caller selects
    ``out[plan.keep]`` (or uses :func:`gather_kept`).

    Args:
        embeds: ``[N, D]`` embeddings the plan was computed for; not modified.
        plan: the plan (``plan.keep`` of length ``N``).

    Returns:
        ``[N, D]`` new tensor, same dtype and device as ``embeds``.

    Raises:
        ValueError: if the plan does not match ``embeds``.
    """
    if embeds.dim() != 2:
        raise ValueError(f"embeds must be [N, D], got shape {tuple(embeds.shape)}")
    if plan.keep.shape[0] != embeds.shape[0]:
        raise ValueError(f"plan is for {plan.keep.shape[0]} tokens, embeds has {embeds.shape[0]}")
    out = embeds.clone()
    if plan.merge_dst.numel():
        anchors, rows = _merged_anchors(embeds, plan)
        out[anchors] = rows
    return out


def _merged_anchors(embeds: torch.Tensor, plan: KeepPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """``(anchors [A] int64 ascending, merged rows [A, D] in embeds' dtype)`` of the plan's merges."""
    anchors, slot = torch.unique(plan.merge_dst, return_inverse=True)
    w = plan.merge_weight.to(torch.float32)
    src = embeds[plan.merge_src].to(torch.float32) * w.unsqueeze(-1)
    dev = embeds.device
    merged = torch.zeros(int(anchors.numel()), embeds.shape[1], dtype=torch.float32, device=dev).index_add_(0, slot, src)
    wsum = torch.zeros(int(anchors.numel()), dtype=torch.float32, device=dev).index_add_(0, slot, w)
    new = (embeds[anchors].to(torch.float32) + merged) / (1.0 + wsum).unsqueeze(-1)
    return anchors, new.to(embeds.dtype)


def gather_kept(
    layout: TokenLayout, plan: KeepPlan
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Kept (merged) embeddings, their original positions and indices, in sequence order.

    Args:
        layout: the layout the plan was computed for.
        plan: the plan.

    Returns:
        ``(embeds [N', D], positions [3, N'] int64 or None, kept_index [N'] int64)``; ``kept_index``
        is increasing (an order-preserving subsequence of ``range(N)``) and kept tokens keep their
        original TMRoPE ids.
    """
    if plan.keep.shape[0] != layout.num_tokens:
        raise ValueError(f"plan is for {plan.keep.shape[0]} tokens, the layout has {layout.num_tokens}")
    kept_index = torch.nonzero(plan.keep, as_tuple=True)[0]
    embeds = layout.embeds[kept_index]  # only the kept rows are copied
    if plan.merge_dst.numel():
        anchors, rows = _merged_anchors(layout.embeds, plan)
        embeds[torch.searchsorted(kept_index, anchors)] = rows
    positions = None if layout.positions is None else layout.positions[:, kept_index]
    return embeds, positions, kept_index
