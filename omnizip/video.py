"""Stage D of OmniZip: interleaved spatio-temporal compression (ISTC) of video frames (spec §3).

Frames are processed in chunk order; inside a chunk, frame positions 0, 2, 4, ... are pruned
*spatially* by density peaks (DPC-kNN) and positions 1, 3, ... *temporally* against the previous
frame's original tokens (keep the tokens that changed most). Each frame ``f`` keeps ``kappa_f``
tokens; the caller decides ``kappa_f`` (the reference uses ``floor(P * (1 - r_w))`` for every frame of
chunk ``w``; the streaming controller distributes an exact per-chunk count).

DPC-kNN score of token ``i`` in a frame (the v2 reference)::

    d_ij  = 1 - cos(x_i, x_j), d_ii = +inf
    rho_i = exp(-mean of the k smallest d_ij),  k = min(knn_k, P - 1)
    delta_i = min_{j: rho_j > rho_i} d_ij, or max_j d_ij (d_ii = 0) for the densest token(s)
    score_i = rho_i * delta_i  (keep the largest)

Numerics are float32 with ``torch.nn.functional.normalize`` (as the reference). Frames are
batched (``[B, P, D]``) so the cost is a few batched matrix products per chunk, no Python loop over
tokens. Tie rule: among equal scores the lower spatial index is kept first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_FRAME_BATCH = 16


def dpc_knn_scores(frames: torch.Tensor, knn_k: int = 5) -> torch.Tensor:
    """DPC-kNN importance of every token of every frame (larger = keep first).

    Args:
        frames: ``[B, P, D]`` float tokens of ``B`` frames, ``P >= 2``.
        knn_k: neighbourhood size (capped at ``P - 1``).

    Returns:
        ``[B, P]`` float32 ``rho * delta``.
    """
    return _dpc_from_normed(F.normalize(frames.to(torch.float32), dim=-1), knn_k)


def _dpc_from_normed(normed: torch.Tensor, knn_k: int) -> torch.Tensor:
    """DPC-kNN scores of ``[B, P, D]`` float32 frames already passed through ``F.normalize``."""
    b, p, _ = normed.shape
    dist = 1 - torch.bmm(normed, normed.transpose(1, 2))
    diag = torch.eye(p, dtype=torch.bool).expand(b, p, p)
    dist_inf = dist.masked_fill(diag, float("inf"))
    k = min(knn_k, p - 1)
    knn = torch.topk(dist_inf, k, dim=-1, largest=False).values
    rho = torch.exp(-knn.mean(dim=-1))  # [B, P]
    higher = rho.unsqueeze(1) > rho.unsqueeze(2)  # [b, i, j]: rho_j > rho_i
    delta = dist_inf.masked_fill(~higher, float("inf")).amin(dim=-1)
    peak_delta = dist.masked_fill(diag, 0.0).amax(dim=-1)
    delta = torch.where(torch.isinf(delta), peak_delta, delta)
    return delta * rho


def temporal_similarity(curr: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each token with the same spatial token of the previous frame.

    Args:
        curr: ``[B, P, D]`` float tokens of the frames being pruned.
        prev: ``[B, P, D]`` float original tokens of their previous frames.

    Returns:
        ``[B, P]`` float32 (smaller = changed more = keep first).
    """
    c = F.normalize(curr.to(torch.float32), p=2, dim=-1)
    q = F.normalize(prev.to(torch.float32), p=2, dim=-1)
    return F.cosine_similarity(c, q, dim=-1)


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[idx]`` along dim 0; a strided view (no copy) when ``idx`` is an increasing arithmetic progression."""
    n = int(idx.numel())
    if n == 0:
        return t[idx]
    first = int(idx[0])
    step = int(idx[1]) - first if n > 1 else 1
    if step > 0 and bool((idx == first + step * torch.arange(n)).all()):
        return t[first : first + step * (n - 1) + 1 : step]
    return t[idx]


def istc_keep(
    video: torch.Tensor,
    tokens_per_frame: int,
    frame_pos: torch.Tensor,
    keep_counts: torch.Tensor,
    *,
    knn_k: int = 5,
    rows: torch.Tensor | None = None,
    frame_batch: int = DEFAULT_FRAME_BATCH,
) -> torch.Tensor:
    """ISTC keep-mask over all frames of a layout.

    Args:
        video: ``[F * P, D]`` video tokens in order (frame after frame, raster order inside a frame),
            or, with ``rows``, any ``[N, D]`` tensor holding them; not modified.
        tokens_per_frame: ``P``.
        frame_pos: ``[F]`` int64 position of each frame inside its chunk; even = spatial pruning,
            odd = temporal pruning against frame ``f - 1`` (which must be the previous frame of the
            same chunk).
        keep_counts: ``[F]`` int64 tokens to keep per frame, each in ``[0, P]``.
        knn_k: DPC-kNN neighbourhood size.
        rows: ``[F * P]`` int64 indices of the video tokens in ``video`` (``None``: every row), so
            that frames are gathered batch by batch instead of copying the whole video.
        frame_batch: frames scored per batched matrix product (bounds the float32 working copy to
            ``frame_batch * P * D`` values).

    Returns:
        ``[F * P]`` bool keep-mask.

    Raises:
        ValueError: on inconsistent sizes or keep counts outside ``[0, P]``.
    """
    p = int(tokens_per_frame)
    n = int(video.shape[0]) if rows is None else int(rows.numel())
    if p <= 0:
        if n:
            raise ValueError("tokens_per_frame must be positive when there are video tokens")
        return torch.zeros(0, dtype=torch.bool)
    if n % p:
        raise ValueError(f"{n} video tokens are not a whole number of {p}-token frames")
    f = n // p
    if frame_pos.shape != (f,) or keep_counts.shape != (f,):
        raise ValueError(f"frame_pos and keep_counts must have shape [{f}]")
    if f and (int(keep_counts.min()) < 0 or int(keep_counts.max()) > p):
        raise ValueError(f"keep counts must lie in [0, {p}]")
    grid = (torch.arange(n, dtype=torch.int64) if rows is None else rows.to(torch.int64)).view(f, p)

    def gather(fidx: torch.Tensor) -> torch.Tensor:
        # [B, P, D] tokens of frames ``fidx``; a view when they are one contiguous block of rows.
        first, last = int(grid[fidx[0], 0]), int(grid[fidx[-1], -1])
        if last - first + 1 == int(fidx.numel()) * p:
            return video[first : last + 1].reshape(int(fidx.numel()), p, -1)
        return video[grid[fidx]]
    keep = torch.zeros(f, p, dtype=torch.bool)
    partial = (keep_counts > 0) & (keep_counts < p)
    keep[keep_counts >= p] = True
    todo = torch.nonzero(partial, as_tuple=True)[0]
    if todo.numel() == 0:
        return keep.view(-1)
    temporal = (frame_pos[todo] % 2) == 1
    if bool((frame_pos[todo][temporal] < 1).any()):
        raise ValueError("a temporally pruned frame needs a previous frame in its chunk")
    priority = torch.empty(int(todo.numel()), p, dtype=torch.float32)
    for start in range(0, int(todo.numel()), frame_batch):
        fidx = todo[start : start + frame_batch]
        is_t = temporal[start : start + frame_batch]
        # Normalise every frame this batch touches once (a temporal frame's previous frame is often a
        # spatial frame of the same batch); F.normalize row by row, exactly like the reference.
        need = torch.unique(torch.cat([fidx, fidx[is_t] - 1]))
        normed = F.normalize(gather(need).to(torch.float32), p=2, dim=-1)
        at = torch.searchsorted(need, fidx)
        out = priority[start : start + frame_batch]
        if not bool(is_t.all()):
            out[~is_t] = _dpc_from_normed(_take(normed, at[~is_t]), knn_k)
        if bool(is_t.any()):
            prev = torch.searchsorted(need, fidx[is_t] - 1)
            out[is_t] = -F.cosine_similarity(_take(normed, at[is_t]), _take(normed, prev), dim=-1)
    order = torch.sort(priority, dim=1, descending=True, stable=True).indices
    ranked_keep = torch.arange(p).unsqueeze(0) < keep_counts[todo].unsqueeze(1)
    keep[todo] = torch.zeros_like(ranked_keep).scatter_(1, order, ranked_keep)
    return keep.view(-1)
