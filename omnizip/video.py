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
    return _dpc_from_dist(1 - torch.bmm(normed, normed.transpose(1, 2)), knn_k)


def _dpc_from_raw(frames: torch.Tensor, norms: torch.Tensor, knn_k: int) -> torch.Tensor:
    """DPC-kNN scores from raw float32 frames ``[B, P, D]`` and their row norms ``[B, P]`` (fast path)."""
    gram = torch.bmm(frames, frames.transpose(1, 2))
    return _dpc_from_dist(1 - gram / (norms.unsqueeze(2) * norms.unsqueeze(1)), knn_k)


def _dpc_from_dist(dist: torch.Tensor, knn_k: int) -> torch.Tensor:
    """DPC-kNN scores ``[B, P]`` from cosine distances ``[B, P, P]``."""
    b, p, _ = dist.shape
    diag = torch.eye(p, dtype=torch.bool, device=dist.device).expand(b, p, p)
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


def _progression(idx: list[int]) -> tuple[int, int] | None:
    """``(first, step)`` when ``idx`` is an increasing arithmetic progression, else None."""
    if not idx:
        return None
    step = idx[1] - idx[0] if len(idx) > 1 else 1
    if step > 0 and all(b - a == step for a, b in zip(idx, idx[1:], strict=False)):
        return idx[0], step
    return None


def _take(t: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """``t[idx]`` along dim 0; a strided view (no copy) when ``idx`` is an increasing progression."""
    prog = _progression(idx)
    if prog is None:
        return t[idx]
    first, step = prog
    return t[first : first + step * (len(idx) - 1) + 1 : step]


def _put(t: torch.Tensor, idx: list[int], value: torch.Tensor) -> None:
    """``t[idx] = value`` along dim 0 (a slice assignment when ``idx`` is an increasing progression)."""
    prog = _progression(idx)
    if prog is None:
        t[idx] = value
    else:
        first, step = prog
        t[first : first + step * (len(idx) - 1) + 1 : step] = value


def istc_keep(
    video: torch.Tensor,
    tokens_per_frame: int,
    frame_pos: torch.Tensor,
    keep_counts: torch.Tensor,
    *,
    knn_k: int = 5,
    rows: torch.Tensor | None = None,
    frame_batch: int = DEFAULT_FRAME_BATCH,
    exact: bool = True,
    row_norms: torch.Tensor | None = None,
    score_dtype: torch.dtype = torch.float32,
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
        exact: True follows the reference's operation order (``F.normalize`` then products, so the
            offline keep-masks match it token for token); False computes the same cosines from raw
            Gram matrices, dot products and row norms (no normalised copy of the frames, faster;
            results differ only by float rounding, i.e. on exact near-ties).
        row_norms: ``[F * P]`` float32 precomputed ``||x||`` of the video tokens for the fast path
            (saves a pass over the frames), or ``None``.
        score_dtype: dtype of the DPC-kNN and temporal scores (float32; bfloat16 mimics the
            reference's arithmetic with a bf16 model).

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
        return torch.zeros(0, dtype=torch.bool, device=video.device)
    if n % p:
        raise ValueError(f"{n} video tokens are not a whole number of {p}-token frames")
    f = n // p
    if frame_pos.shape != (f,) or keep_counts.shape != (f,):
        raise ValueError(f"frame_pos and keep_counts must have shape [{f}]")
    # Per-frame bookkeeping in Python ints (frames, never tokens): a stream window has 2 frames and
    # tiny tensor ops would cost more than the arithmetic. One host sync reads all three.
    grid = None if rows is None else rows.to(torch.int64).view(f, p)
    per_frame = [keep_counts.to(torch.int64), frame_pos.to(torch.int64)] + ([] if grid is None else [grid[:, 0]])
    host = torch.stack(per_frame).tolist() if f else [[] for _ in per_frame]
    counts, pos = host[0], host[1]
    if any(c < 0 or c > p for c in counts):
        raise ValueError(f"keep counts must lie in [0, {p}]")
    first_row = list(range(0, n, p)) if grid is None else host[2]
    dev = video.device
    # Rank r of frame i is kept iff r < count_i (all for a full frame, none for an empty one).
    ranked_keep = torch.arange(p, device=dev).unsqueeze(0) < keep_counts.to(dev).unsqueeze(1)  # [F, P]
    todo = [i for i, c in enumerate(counts) if 0 < c < p]
    if not todo:
        return ranked_keep.reshape(-1)
    for i in todo:
        if pos[i] % 2 == 1 and (i == 0 or pos[i - 1] != pos[i] - 1):
            raise ValueError("a temporally pruned frame needs the previous frame of its chunk")

    def gather(frames: list[int]) -> torch.Tensor:
        # [B, P, D] tokens of the (ascending) frames; a view when they are one contiguous block of rows.
        first = first_row[frames[0]]
        if all(first_row[fr] == first + j * p for j, fr in enumerate(frames)):
            return video[first : first + len(frames) * p].reshape(len(frames), p, -1)
        if grid is None:
            return video.view(f, p, -1)[frames]
        return video[grid[frames]]

    # Frames outside ``todo`` keep all or none of their tokens, so their (zero) priority is never used.
    priority = torch.zeros(f, p, dtype=torch.float32, device=dev)
    for start in range(0, len(todo), frame_batch):
        batch = todo[start : start + frame_batch]
        temporal = [pos[i] % 2 == 1 for i in batch]
        # Normalise every frame this batch touches once (a temporal frame's previous frame is often a
        # spatial frame of the same batch); F.normalize row by row, exactly like the reference.
        need = sorted(set(batch) | {i - 1 for i, t in zip(batch, temporal, strict=True) if t})
        slot = {fr: j for j, fr in enumerate(need)}
        x = gather(need).to(score_dtype)
        if exact:
            x = F.normalize(x, p=2, dim=-1)
        elif row_norms is None:
            norms = x.norm(dim=-1).clamp_min(1e-12)
        else:
            norms = _take(row_norms.view(f, p), need).clamp_min(1e-12)
        spatial_rows = [i for i, t in zip(batch, temporal, strict=True) if not t]
        temporal_rows = [i for i, t in zip(batch, temporal, strict=True) if t]
        if spatial_rows:
            at = [slot[r] for r in spatial_rows]
            scores = _dpc_from_normed(_take(x, at), knn_k) if exact else _dpc_from_raw(
                _take(x, at), _take(norms, at), knn_k)
            _put(priority, spatial_rows, scores)
        if temporal_rows:
            at = [slot[r] for r in temporal_rows]
            at_prev = [slot[r - 1] for r in temporal_rows]
            if exact:
                sim = F.cosine_similarity(_take(x, at), _take(x, at_prev), dim=-1)
            else:
                dot = torch.linalg.vecdot(_take(x, at), _take(x, at_prev))
                sim = dot / (_take(norms, at) * _take(norms, at_prev))
            _put(priority, temporal_rows, -sim)
    order = torch.sort(priority, dim=1, descending=True, stable=True).indices
    return torch.zeros_like(ranked_keep).scatter_(1, order, ranked_keep).view(-1)
