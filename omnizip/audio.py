"""Stage B of OmniZip: salient audio tokens, anchors and the cross-modal anchor merge (spec §3).

Pure functions on audio-order tensors. Given which audio tokens are *salient* (kept outright), the
rest ``R`` (sorted) yields ``C`` evenly strided anchors (kept); every other token of ``R`` (the pool)
is assigned to its most similar anchor, scored by its best cosine similarity to the video, and each
anchor absorbs its top-``G`` members with softmax weights over those scores. Pool tokens are
dropped whether merged or not.

Numerics: scores are computed in float32 (whatever the input dtype) with the reference's
normalisation ``x / (||x|| + 1e-6)``; for the video side of the cross-modal score the division by
``||v|| + 1e-6`` is applied to the ``[M, block]`` products instead of to a normalised copy of the
video (same value up to float rounding; these scores only choose and weight the merged tokens,
never which tokens are kept). Tie rule everywhere in this module: among equal scores the token
that comes first (lower index) wins; ``argmax`` picks the first maximal anchor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

EPS = 1e-6
DEFAULT_VIDEO_BLOCK_ROWS = 4096

CrossModalFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AudioSelection:
    """Result of the audio stage, in audio order.

    Attributes:
        keep: ``[Na]`` bool, salient tokens and anchors.
        anchors: ``[C]`` int64 audio-order indices of the anchors (ascending).
        merge_dst: ``[M]`` int64 anchor receiving each merged token (audio order).
        merge_src: ``[M]`` int64 merged (dropped) token (audio order); grouped by anchor, best first.
        merge_weight: ``[M]`` float32 softmax weight of each merged token inside its anchor.
    """

    keep: torch.Tensor
    anchors: torch.Tensor
    merge_dst: torch.Tensor
    merge_src: torch.Tensor
    merge_weight: torch.Tensor


def salient_count(n: int, rho_audio: float) -> int:
    """Count the salient audio tokens: ``round((1 - rho_audio) * n)`` (Python's round, like the reference)."""
    return int(max(0, min(n, round((1.0 - rho_audio) * n))))


def anchor_count(n: int, anchor_ratio: float) -> int:
    """Return the requested anchor count ``round(anchor_ratio * n)`` (before capping to the non-salient tokens)."""
    return int(max(0, round(anchor_ratio * n)))


def nominal_audio_keep(n: int, rho_audio: float, anchor_ratio: float, g: int) -> int:
    """Audio tokens OmniZip keeps out of ``n``: the salient ones plus the anchors (``G > 0`` only)."""
    k = salient_count(n, rho_audio)
    if g <= 0 or k >= n:
        return k
    return k + min(anchor_count(n, anchor_ratio), n - k)


def normalise_rows(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``x / (||x|| + 1e-6)`` row-wise in ``dtype`` (the reference's cosine normalisation).

    Args:
        x: ``[n, D]`` any float dtype.
        dtype: the score dtype (float32, or bfloat16 to mimic the reference's bf16 arithmetic).

    Returns:
        ``[n, D]`` in ``dtype``, a new tensor.
    """
    x = x.to(dtype)
    return x / (x.norm(dim=-1, keepdim=True) + EPS)


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Return the indices of the ``k`` largest scores, best first; ties go to the lower index.

    Args:
        scores: ``[n]`` float.
        k: how many (clamped to ``[0, n]``).

    Returns:
        ``[k]`` int64.
    """
    k = max(0, min(int(k), int(scores.shape[0])))
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k]


def evenly_spaced(n: int, k: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """``k`` indices spread evenly over ``range(n)`` (the no-saliency fallback), ascending.

    Returns:
        ``[k]`` int64 on ``device`` with ``idx_i = floor((i + 1/2) * n / k)``.
    """
    k = max(0, min(int(k), n))
    if k == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    return torch.div((2 * torch.arange(k, dtype=torch.int64, device=device) + 1) * n, 2 * k, rounding_mode="floor")


def salient_mask(
    saliency: torch.Tensor | None, n: int, k: int, *, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Boolean mask of the ``k`` most salient of ``n`` tokens (evenly spaced when ``saliency`` is None).

    Args:
        saliency: ``[n]`` float or ``None``.
        n: token count.
        k: how many to mark.
        device: where the mask lives when ``saliency`` is None (else on ``saliency.device``).

    Returns:
        ``[n]`` bool.
    """
    if saliency is not None:
        device = saliency.device
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    idx = evenly_spaced(n, k, device=device) if saliency is None else top_indices(saliency, k)
    mask[idx] = True
    return mask


def contiguous_start(rows: torch.Tensor) -> int | None:
    """First index when the increasing ``rows`` are one contiguous range (slice instead of gather), else None."""
    n = int(rows.numel())
    if n == 0:
        return None
    ends = rows[:: max(1, n - 1)].tolist()  # [first, last] ([first] when n == 1): one host sync
    first, last = ends[0], ends[-1]
    return first if last - first + 1 == n else None


def _row_blocks(video: torch.Tensor, rows: torch.Tensor | None, block_rows: int) -> list[tuple[int, int, int]]:
    """Split ``rows`` into contiguous runs of at most ``block_rows``: ``(offset in rows, first row, length)``."""
    if rows is None:
        n = int(video.shape[0])
        return [(s, s, min(block_rows, n - s)) for s in range(0, n, block_rows)]
    n = int(rows.numel())
    if n == 0:
        return []
    start = contiguous_start(rows)  # the common case (a window's video), one host sync
    if start is not None:
        return [(s, start + s, min(block_rows, n - s)) for s in range(0, n, block_rows)]
    is_start = torch.ones_like(rows, dtype=torch.bool)
    is_start[1:] = rows[1:] - rows[:-1] != 1
    at = torch.nonzero(is_start, as_tuple=True)[0]
    offsets, firsts = torch.stack([at, rows[at]]).tolist()
    bounds = [*offsets, n]
    out = []
    for a, b, first in zip(bounds[:-1], bounds[1:], firsts, strict=True):
        for s in range(a, b, block_rows):
            out.append((s, first + (s - a), min(block_rows, b - s)))
    return out


def max_cosine(
    queries_normed: torch.Tensor,
    video: torch.Tensor,
    rows: torch.Tensor | None = None,
    *,
    norms: torch.Tensor | None = None,
    block_rows: int = DEFAULT_VIDEO_BLOCK_ROWS,
) -> torch.Tensor:
    """Best cosine similarity of each query to any video token, blockwise over the video.

    Args:
        queries_normed: ``[M, D]`` rows already normalised by :func:`normalise_rows`; their dtype is
            the score dtype (float32, or bfloat16 to mimic the reference).
        video: ``[N, D]`` embeddings holding the video tokens (any float dtype); read block by block
            so that no normalised copy of the whole video is made.
        rows: ``[Nv]`` int64 increasing indices of the video tokens in ``video`` (``None``: every
            row); each contiguous run of rows is read in place (no gathered copy).
        norms: ``[Nv]`` float32 precomputed ``||v||`` of the video tokens (saves a pass), or ``None``.
        block_rows: at most this many video rows per matrix product.

    Returns:
        ``[M]`` float32 (``-inf`` when there is no video row).
    """
    best = torch.full((queries_normed.shape[0],), -torch.inf, dtype=torch.float32, device=queries_normed.device)
    for start, first, length in _row_blocks(video, rows, block_rows):
        # A block is a contiguous range of rows: a view, never a gathered copy.
        block = video[first : first + length].to(queries_normed.dtype)
        block_norms = block.norm(dim=-1) if norms is None else norms[start : start + length]
        # cos = (q . v) / (||v|| + eps): the normalisation is applied to the [M, B] scores instead of
        # writing a normalised copy of the block (same value up to float rounding).
        scores = (queries_normed @ block.T).div_(block_norms + EPS)
        torch.maximum(best, scores.amax(dim=1), out=best)
    return best


def select_audio(
    audio: torch.Tensor,
    salient: torch.Tensor,
    *,
    anchor_num: int,
    g: int,
    cross_modal: CrossModalFn | None,
    score_dtype: torch.dtype = torch.float32,
) -> AudioSelection:
    """Anchors, cross-modal scores and the top-``G`` merge of one audio set (spec Stage B, steps 2-7).

    Args:
        audio: ``[Na, D]`` audio embeddings (any float dtype; not modified).
        salient: ``[Na]`` bool, tokens kept outright (``K_dom``).
        anchor_num: requested anchor count ``C`` (capped to the non-salient tokens).
        g: max tokens merged per anchor; ``0`` disables anchors (the v2 rule).
        cross_modal: maps ``[M, D]`` normalised pool rows to their ``[M]`` score (best cosine to the
            video); ``None`` means no video: the score is the best cosine to the anchors.
        score_dtype: dtype of the cosine scores (float32; bfloat16 mimics the reference). The merge
            weights are a float32 softmax of the scores either way.

    Returns:
        The :class:`AudioSelection`.
    """
    n = int(audio.shape[0])
    keep = salient.clone()
    dev = audio.device
    no_anchor = torch.zeros(0, dtype=torch.int64, device=dev)
    remaining = torch.nonzero(~salient, as_tuple=True)[0]
    r = int(remaining.numel())
    if r == 0 or anchor_num <= 0 or g <= 0 or n == 0:
        return AudioSelection(keep, no_anchor, no_anchor, no_anchor.clone(), torch.zeros(0, dtype=torch.float32, device=dev))
    c = min(anchor_num, r)
    step = max(1, r // c)
    init_pos = torch.arange(0, r, step, dtype=torch.int64, device=dev)[:c]
    anchors = remaining[init_pos]
    keep[anchors] = True
    pool_local = torch.ones(r, dtype=torch.bool, device=dev)
    pool_local[init_pos] = False
    # The c anchor positions are distinct, so the pool has r - c tokens: a stable sort puts them first
    # in order (no data-dependent size, no host sync).
    m = r - c
    pool = remaining[torch.sort(pool_local.to(torch.int8), descending=True, stable=True).indices[:m]]
    if m == 0:
        return AudioSelection(keep, anchors, no_anchor, no_anchor.clone(), torch.zeros(0, dtype=torch.float32, device=dev))
    a_norm = normalise_rows(audio[torch.cat([anchors, pool])], score_dtype)
    anc_norm, pool_norm = a_norm[:c], a_norm[c:]
    sim_aa = pool_norm @ anc_norm.T  # [M, C]
    assign = sim_aa.argmax(dim=1)
    score = sim_aa.amax(dim=1) if cross_modal is None else cross_modal(pool_norm)
    # Top-G members per anchor: order by score (desc, stable), then group by anchor (stable).
    by_score = torch.sort(score, descending=True, stable=True).indices
    order = by_score[torch.sort(assign[by_score], stable=True).indices]
    grp = assign[order]
    counts = torch.zeros(c, dtype=torch.int64, device=dev).index_add_(0, assign, torch.ones_like(assign))
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(m, dtype=torch.int64, device=dev) - starts[grp]
    picked = torch.nonzero(rank < g, as_tuple=True)[0]  # one data-dependent size
    chosen = order[picked]
    grp_c = assign[chosen]
    slot = rank[picked]
    # Softmax per anchor over its chosen members: one padded [C, G] row per anchor.
    padded = torch.full((c, min(g, m)), -torch.inf, dtype=torch.float32, device=dev)
    padded[grp_c, slot] = score[chosen]
    weight = torch.softmax(padded, dim=1)[grp_c, slot]
    return AudioSelection(keep, anchors, anchors[grp_c], pool[chosen], weight)
