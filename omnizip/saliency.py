"""Stage A of OmniZip: audio-token saliency from the last audio-encoder layer (spec §3, Stage A).

The saliency of encoder position ``j`` is the mean attention it *receives*::

    s_enc(j) = 1 / (H * T_q) * sum_h sum_i softmax_i(Q_h K_h^T / sqrt(d_h))[i, j]

where the softmax runs over the keys of a *block* and ``T_q`` is the number of queries of that
block. Two variants:

* ``global``: one block spanning every position (the reference code ignores the encoder's 2-s
  block-diagonal mask and attends over the whole clip);
* ``block``: one softmax per block given by ``block_lengths`` (what the encoder really computes and
  the only variant a stream can use; a block's saliencies then sum to 1).

Nothing of size ``H x T x T`` is ever built: heads and query rows are processed in chunks whose
size is chosen from a byte budget, and each chunk's column sums are reduced immediately with one
small batched matrix-vector product (``colsum = (1 / Z)^T exp(L - rowmax)``), so the extra memory
is ``O(heads_chunk x rows_chunk x T)`` and bounded by ``max_chunk_bytes`` plus one head-chunk of
keys.

:func:`pool_saliency` then maps encoder positions (50/s) to LLM audio tokens (25/s) like the
encoder's ``AvgPool1d(2, 2)``: drop an odd last position, average adjacent pairs.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch

logger = logging.getLogger(__name__)

DEFAULT_MAX_CHUNK_BYTES = 32 * 1024 * 1024

_FLOAT32_BYTES = 4


def _chunk_sizes(num_heads: int, num_keys: int, head_dim: int, max_chunk_bytes: int) -> tuple[int, int]:
    """Choose (heads per chunk, query rows per chunk) so that one chunk fits the byte budget.

    A chunk holds a float32 ``[hc, rc, num_keys]`` logit buffer plus the float32 keys of its heads
    (``[hc, num_keys, head_dim]``) and queries (``[hc, rc, head_dim]``).
    """
    for hc in range(num_heads, 0, -1):
        fixed = hc * num_keys * head_dim * _FLOAT32_BYTES
        per_row = hc * (num_keys + head_dim) * _FLOAT32_BYTES
        rows = (max_chunk_bytes - fixed) // per_row
        if rows >= num_keys or (hc == 1 and rows >= 1):
            return hc, int(max(1, min(rows, num_keys)))
    return 1, 1


def _block_column_sums(q: torch.Tensor, k: torch.Tensor, max_chunk_bytes: int) -> torch.Tensor:
    """Column sums of the per-head softmax attention of one block, summed over heads.

    Args:
        q: ``[Tb, H, dh]`` queries of the block (any float dtype).
        k: ``[Tb, H, dh]`` keys of the block.
        max_chunk_bytes: byte budget of one chunk.

    Returns:
        ``[Tb]`` float64, ``sum_h sum_i A_h[i, j]``.
    """
    t, h, dh = q.shape
    scale = 1.0 / math.sqrt(dh)
    hc, rc = _chunk_sizes(h, t, dh, max_chunk_bytes)
    col = torch.zeros(t, dtype=torch.float64, device=q.device)
    # One logits buffer for the whole block, reused by every chunk (so the allocator never holds two).
    buf = torch.empty(hc * rc * t, dtype=torch.float32, device=q.device)
    for h0 in range(0, h, hc):
        h1 = min(h, h0 + hc)
        keys = k[:, h0:h1, :].permute(1, 2, 0).to(torch.float32, memory_format=torch.contiguous_format)
        for r0 in range(0, t, rc):
            r1 = min(t, r0 + rc)
            queries = q[r0:r1, h0:h1, :].permute(1, 0, 2).to(torch.float32) * scale  # [hc, rc, dh]
            logits = buf[: (h1 - h0) * (r1 - r0) * t].view(h1 - h0, r1 - r0, t)
            torch.bmm(queries, keys, out=logits)  # [hc, rc, Tb]
            logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_()
            inv_z = logits.sum(dim=-1).reciprocal_().unsqueeze(1)  # [hc, 1, rc]
            col += torch.bmm(inv_z, logits).sum(dim=(0, 1)).to(torch.float64)
    return col


def audio_saliency(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_lengths: list[int] | None = None,
    variant: Literal["global", "block"] = "global",
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> torch.Tensor:
    """Mean attention received per audio-encoder position (spec §3, Stage A), chunked.

    Args:
        q: ``[T, H, dh]`` queries of the last audio-encoder layer (before the attention scaling),
            any float dtype; never modified.
        k: ``[T, H, dh]`` keys of the same layer.
        block_lengths: lengths of the encoder's attention blocks (positions, summing to ``T``), used
            by the ``block`` variant; ``None`` means one block of length ``T``.
        variant: ``global`` (softmax over all ``T`` keys, normalised by ``H * T``, the reference) or
            ``block`` (softmax inside each block, normalised by ``H`` times the block's query count).
        max_chunk_bytes: byte budget of one working chunk (float32 logits of a head/row chunk plus
            that chunk's keys and queries). Peak extra memory is about this plus the float64
            ``[T]`` accumulator.

    Returns:
        ``[T]`` float32 saliency; each block (the whole clip for ``global``) sums to 1.

    Raises:
        ValueError: on mismatched shapes, a bad variant or block lengths that do not sum to ``T``.
    """
    if q.dim() != 3 or q.shape != k.shape:
        raise ValueError(f"q and k must both be [T, H, dh], got {tuple(q.shape)} and {tuple(k.shape)}")
    if not (q.is_floating_point() and k.is_floating_point()):
        raise ValueError("q and k must be floating-point tensors")
    if variant not in ("global", "block"):
        raise ValueError(f"variant must be 'global' or 'block', got {variant!r}")
    if max_chunk_bytes < 1:
        raise ValueError(f"max_chunk_bytes must be positive, got {max_chunk_bytes}")
    t, h, _ = q.shape
    if t == 0:
        return torch.zeros(0, dtype=torch.float32, device=q.device)
    if variant == "global" or block_lengths is None:
        lengths = [t]
    else:
        lengths = [int(b) for b in block_lengths]
        if any(b <= 0 for b in lengths) or sum(lengths) != t:
            raise ValueError(f"block_lengths must be positive and sum to T={t}, got {block_lengths}")
    out = torch.empty(t, dtype=torch.float32, device=q.device)
    start = 0
    with torch.no_grad():
        for length in lengths:
            end = start + length
            col = _block_column_sums(q[start:end], k[start:end], max_chunk_bytes)
            out[start:end] = (col / (h * length)).to(torch.float32)
            start = end
    return out


def pool_saliency(s: torch.Tensor, stream_lengths: list[int] | None = None) -> torch.Tensor:
    """Pool encoder-position saliency to LLM audio tokens, like the encoder's ``AvgPool1d(2, 2)``.

    Each audio stream (a segment of ``s``) drops its odd last position, then adjacent pairs are
    averaged. With ``stream_lengths=None`` the whole vector is one stream (the reference pools the
    concatenation, which misaligns at stream boundaries when a stream has an odd length).

    Args:
        s: ``[T]`` float saliency per encoder position.
        stream_lengths: encoder positions of each audio stream (summing to ``T``), or ``None``.

    Returns:
        ``[sum_i floor(T_i / 2)]`` float32, one value per LLM audio token.

    Raises:
        ValueError: if ``s`` is not 1-D or the stream lengths do not sum to ``T``.
    """
    if s.dim() != 1:
        raise ValueError(f"s must be 1-D [T], got shape {tuple(s.shape)}")
    t = int(s.shape[0])
    lengths = [t] if stream_lengths is None else [int(x) for x in stream_lengths]
    if any(x < 0 for x in lengths) or sum(lengths) != t:
        raise ValueError(f"stream_lengths must be non-negative and sum to T={t}, got {stream_lengths}")
    parts = []
    start = 0
    for length in lengths:
        even = length - length % 2
        seg = s[start : start + even].to(torch.float32)
        parts.append(seg.reshape(-1, 2).mean(dim=1))
        start += length
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float32, device=s.device)
