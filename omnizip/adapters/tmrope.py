"""Token order and TMRoPE position ids of an audio/video block, computed without the full prompt.

Pure functions that reproduce, for one window of a stream (or a whole clip), what the stock
``get_rope_index`` of each family computes on the full sequence: which placeholder comes where, and
its 3-D position id. Tests check them against the stock implementation on whole clips; the streaming
engine relies on them to place each window's tokens at their true positions.

Qwen2.5-Omni (``use_audio_in_video``): per interleave chunk of ``seconds_per_chunk`` seconds, the
video tokens of the chunk, then its audio tokens. Audio token ``a`` has id ``base + a`` on all three
rows; video grid step ``g`` has temporal id ``base + int(g * second_per_grid * pps)`` and height/width
ids ``base + row`` / ``base + col``.

Qwen3-Omni: tokens are merged one by one by temporal id (video first on ties), with float ids, video
temporal id ``base + g * second_per_grid * pps`` (``pps`` = 13).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AUDIO_KIND = 1
VIDEO_KIND = 2


@dataclass(frozen=True)
class AVTokens:
    """Order and positions of one A/V block.

    Attributes:
        kind: ``[N]`` int64, 1 for audio, 2 for video (same codes as :class:`omnizip.Modality`).
        feature_index: ``[N]`` int64, index into this block's audio features (audio tokens) or video
            features (video tokens), in the encoders' output order.
        positions: ``[3, N]`` position ids (int64 for Qwen2.5-Omni, float32 for Qwen3-Omni).
    """

    kind: torch.Tensor
    feature_index: torch.Tensor
    positions: torch.Tensor

    @property
    def close_position(self) -> float:
        """``max`` of the trailing same-modality run + 1: where the closing special tokens go."""
        n = int(self.kind.shape[0])
        if n == 0:
            raise ValueError("an empty A/V block has no closing position")
        last_kind = self.kind[-1]
        differs = (self.kind != last_kind).nonzero()
        start = int(differs[-1]) + 1 if differs.numel() else 0
        value = (self.positions[:, start:].max() + 1).item()  # + 1 in the ids' dtype (float32), as the stock rope index
        return float(value) if self.positions.is_floating_point() else int(value)


def _video_positions(
    grid_t: int, merged_h: int, merged_w: int, *, base: int, first_grid: int, second_per_grid: float,
    pps: float, float_ids: bool,
) -> torch.Tensor:
    """``[3, grid_t * merged_h * merged_w]`` ids of video tokens in (t, row, col) raster order."""
    grids = torch.arange(first_grid, first_grid + grid_t)
    if float_ids:
        t_ids = (grids * torch.tensor(second_per_grid, dtype=torch.float32) * pps).float()
    else:
        t_ids = (grids * torch.tensor(second_per_grid, dtype=torch.float32) * pps).long()
    per = merged_h * merged_w
    t = t_ids.view(-1, 1).expand(-1, per).reshape(-1)
    h = torch.arange(merged_h).view(1, -1, 1).expand(grid_t, -1, merged_w).reshape(-1)
    w = torch.arange(merged_w).view(1, 1, -1).expand(grid_t, merged_h, -1).reshape(-1)
    out = torch.stack([t.to(t_ids.dtype), h.to(t_ids.dtype), w.to(t_ids.dtype)])
    return out + base


def _video_then_audio(video_pos: torch.Tensor, audio_pos: torch.Tensor) -> AVTokens:
    """All video tokens, then all audio tokens (a non-interleaved block, or one modality alone)."""
    n_video, n_audio = video_pos.shape[1], audio_pos.shape[1]
    kind = torch.cat([torch.full((n_video,), VIDEO_KIND), torch.full((n_audio,), AUDIO_KIND)]).long()
    feat = torch.cat([torch.arange(n_video), torch.arange(n_audio)]).long()
    return AVTokens(kind, feat, torch.cat([video_pos, audio_pos], dim=1))


def _chunk_bounds(rel_values: list[float], tokens_per_chunk: int, first_chunk: int) -> list[tuple[int, int]]:
    """Stock ``get_chunked_index``: split monotone values into runs per chunk (one step per token)."""
    bounds = []
    start, current = 0, first_chunk + 1
    for i, value in enumerate(rel_values):
        if value >= current * tokens_per_chunk:
            bounds.append((start, i))
            start = i
            current += 1
    bounds.append((start, len(rel_values)))
    return bounds


def qwen2_5_av_tokens(
    n_audio: int,
    grid_thw: tuple[int, int, int] | None,
    *,
    base: int,
    first_audio: int = 0,
    first_grid: int = 0,
    spatial_merge_size: int = 2,
    second_per_grid: float = 1.0,
    position_id_per_seconds: float = 25,
    seconds_per_chunk: float = 2,
    interleave: bool = True,
) -> AVTokens:
    """Order and ids of a Qwen2.5-Omni A/V block (or one stream window of it).

    Args:
        n_audio: LLM audio tokens in this block.
        grid_thw: ``(t, h, w)`` of this block's video in patches, or None for audio only.
        base: position id of the first A/V token of the whole stream/clip.
        first_audio: audio tokens that came before this block in the stream.
        first_grid: temporal grid steps that came before this block in the stream.
        spatial_merge_size: side of the ViT's patch merge (2).
        second_per_grid: seconds per temporal grid step (``temporal_patch_size / fps``).
        position_id_per_seconds: temporal ids per second (25 for Qwen2.5-Omni, 13 for Qwen3-Omni).
        seconds_per_chunk: interleave chunk length in seconds (Qwen2.5-Omni only).
        interleave: ``use_audio_in_video`` layout; False puts all video, then all audio.

    Returns:
        The block's :class:`AVTokens` (int64 positions).
    """
    if grid_thw is not None:
        gt, gh, gw = grid_thw
        mh, mw = gh // spatial_merge_size, gw // spatial_merge_size
        video_pos = _video_positions(
            gt, mh, mw, base=base, first_grid=first_grid, second_per_grid=second_per_grid,
            pps=position_id_per_seconds, float_ids=False,
        )
    else:
        video_pos = torch.zeros(3, 0, dtype=torch.long)
    audio_idx = torch.arange(first_audio, first_audio + n_audio)
    audio_pos = audio_idx.view(1, -1).expand(3, -1) + base
    n_video = video_pos.shape[1]
    if not interleave or n_video == 0 or n_audio == 0:
        return _video_then_audio(video_pos, audio_pos)

    tpc = int(position_id_per_seconds * seconds_per_chunk)
    v_rel = (video_pos[0] - base).tolist()
    a_rel = (audio_pos[0] - base).tolist()
    v_runs = _chunk_bounds(v_rel, tpc, int(v_rel[0] // tpc))
    a_runs = _chunk_bounds(a_rel, tpc, int(a_rel[0] // tpc))
    if first_audio == 0 and first_grid == 0:
        # Start of a clip/stream: the stock code pairs the j-th video run with the j-th audio run.
        pairs = [
            (v_runs[j] if j < len(v_runs) else None, a_runs[j] if j < len(a_runs) else None)
            for j in range(max(len(v_runs), len(a_runs)))
        ]
    else:
        # Later stream window: pair runs by their absolute chunk number.
        v_by = {int(v_rel[s] // tpc): (s, e) for s, e in v_runs}
        a_by = {int(a_rel[s] // tpc): (s, e) for s, e in a_runs}
        pairs = [(v_by.get(j), a_by.get(j)) for j in sorted(set(v_by) | set(a_by))]
    kinds, feats, poss = [], [], []
    for v_run, a_run in pairs:
        for run, kind_code, pos in ((v_run, VIDEO_KIND, video_pos), (a_run, AUDIO_KIND, audio_pos)):
            if run is None:
                continue
            s, e = run
            kinds.append(torch.full((e - s,), kind_code))
            feats.append(torch.arange(s, e))
            poss.append(pos[:, s:e])
    return AVTokens(torch.cat(kinds).long(), torch.cat(feats).long(), torch.cat(poss, dim=1))


def qwen3_av_tokens(
    n_audio: int,
    grid_thw: tuple[int, int, int] | None,
    *,
    base: float,
    first_audio: int = 0,
    first_grid: int = 0,
    spatial_merge_size: int = 2,
    second_per_grid: float = 1.0,
    position_id_per_seconds: float = 13,
    interleave: bool = True,
) -> AVTokens:
    """Order and ids of a Qwen3-Omni A/V block: tokens merged by temporal id, video first on ties.

    Reproduces the stock ``get_rope_index`` (``use_audio_in_video``): video grid ``g`` has temporal id
    ``base + g * second_per_grid * pps`` computed in float32 (not truncated, so it may be fractional
    when ``second_per_grid * pps`` is not an integer), audio token ``a`` has ``base + a``; the two
    sorted runs are merged like the stock two-pointer loop, which takes the video token whenever its
    temporal id is ``<=`` the next audio token's. Within a stream, windows cut at a grid boundary
    produce the same tokens as the whole clip, because every audio token with a temporal id below a
    grid's precedes that grid.

    Args mirror :func:`qwen2_5_av_tokens` (``base`` is the id of the first A/V token, i.e. the last
    opening token's id + 1: Qwen3 gives the two opening tokens consecutive ids).

    Returns:
        The block's :class:`AVTokens` with float32 positions, as the stock code.
    """
    if grid_thw is not None:
        gt, gh, gw = grid_thw
        mh, mw = gh // spatial_merge_size, gw // spatial_merge_size
        video_pos = _video_positions(
            gt, mh, mw, base=0, first_grid=first_grid, second_per_grid=second_per_grid,
            pps=position_id_per_seconds, float_ids=True,
        ) + base
    else:
        video_pos = torch.zeros(3, 0, dtype=torch.float32)
    audio_pos = torch.arange(first_audio, first_audio + n_audio, dtype=torch.float32).view(1, -1).expand(3, -1) + base
    n_video = video_pos.shape[1]
    sequential = _video_then_audio(video_pos, audio_pos.float())
    if not interleave or n_video == 0 or n_audio == 0:
        return sequential
    # Two-pointer merge of two sorted runs (video first when its id is <= the audio id), as index
    # arithmetic: video i lands after the audio tokens with a strictly smaller id, audio j after the
    # video tokens with an id <= its own. Ids compared exactly (float32 values, float64 compare).
    v_t = video_pos[0].double().contiguous()
    a_t = audio_pos[0].double().contiguous()
    slot = torch.empty(n_video + n_audio, dtype=torch.long)
    slot[:n_video] = torch.arange(n_video) + torch.searchsorted(a_t, v_t, right=False)
    slot[n_video:] = torch.arange(n_audio) + torch.searchsorted(v_t, a_t, right=True)
    order = torch.empty_like(slot)
    order[slot] = torch.arange(n_video + n_audio)
    return AVTokens(sequential.kind[order], sequential.feature_index[order], sequential.positions[:, order])
