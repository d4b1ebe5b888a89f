"""Stage C of OmniZip: audio retention -> per-window video pruning ratio, offline and online.

Offline (the v2 reference, spec §3 Stage C)
-------------------------------------------
A window's retention score ``S_w`` (kept audio / audio of the window, anchors count as kept) maps
to a base video pruning ratio ``r0_w = clip(rho_max - (rho_max - rho_min) * S_w, rho_min, rho_max)``:
windows whose audio survived pruning are information-dense and keep more video. The reference then
re-normalises the guided windows (those with audio) to the global budget ``rho_video * N_v`` with
one multiplicative pass and one additive pass, holding the lowest and the highest base ratio fixed
(:func:`reference_video_ratios`; windows without audio simply use ``rho_video``).

Online (streaming mode; our design) — :class:`StreamingBudgetController`
------------------------------------------------------------------------
A stream cannot renormalise over windows it has not seen, so each window's video *keep count* is
decided when the window arrives. Notation: window ``t`` has ``n_t > 0`` video tokens (windows
without video are skipped: they neither count nor change the state), retention score ``S_t``
(``None`` without audio), target keep fraction ``q* = 1 - rho_video``, horizon ``H``
(``controller_horizon``) and tolerance ``tau`` (``controller_tolerance``).

1. Base ratio, the same linear map: ``r0_t = clip(rho_max - (rho_max - rho_min) S_t, rho_min, rho_max)``
   (``rho_video`` without audio). This is the only place the content enters, and it is monotone:
   more retained audio never gives a higher base pruning ratio.
2. Online re-normalisation: ``u_t = r0_t - m_t + rho_video`` where ``m_t`` is the mean base ratio of
   the previous ``min(t - 1, H - 1)`` video windows (``m_1 = r0_1``): the streaming analogue of the
   reference's rescaling, it centres the ratios on the budget while keeping their spread.
3. Error feedback on what was *achieved*: ``E_{t-1} = sum_{w<t} (k_w - q* n_w)`` counts every kept
   token, so per-frame rounding and clipping errors are carried forward, not just nominal ratios.
   Desired count: ``k^_t = (1 - u_t) n_t - E_{t-1} / R`` with ``R = max(1, H // 2)``.
4. Hard constraints, in whole tokens:
   (a) ratio band ``k in [floor((1 - rho_max) n_t), ceil((1 - rho_min) n_t)]`` (rounded outward so it is
   never stricter than the band; a 2-token window may keep 0, 1 or 2 tokens);
   (b) sliding window: with ``I_t`` = the last ``H - 1`` video windows plus ``t`` (padded at the start of
   a stream with virtual windows of ``n_t`` tokens exactly on target),
   ``|sum_{I_t} (k_w - q* n_w)| <= tau * sum_{I_t} n_w``.
   ``k_t`` is the integer of (a) ∩ (b) nearest to ``k^_t`` (ties toward fewer tokens). If the
   intersection is empty, (a) wins and ``k_t`` is the value of (a) closest to (b).
5. The window keeps exactly ``k_t`` video tokens, spread over its ``F`` frames (``floor(k_t / F)`` each,
   one more for the first ``k_t mod F`` frames), so per-frame floors never lose tokens.

Guarantee. If (i) every video window has the same token count ``n``, (ii) ``q*`` lies in
``[1 - rho_max, 1 - rho_min]`` and (iii) ``2 tau H n >= 1`` (true for any ``n >= 1`` at ``tau = 0.02``,
``H = 30``), then the achieved video retention over *any* ``H`` consecutive video windows is within
``tau`` of ``q*`` (and every shorter prefix of a stream deviates by at most ``tau H n`` tokens).
Why: let ``D_t`` be the sum in (b) and ``B = tau H n``; we show (a) ∩ (b) is never empty, so
``|D_t| <= B`` holds at every step by induction. After the first ``H`` windows, the window leaving
``I_t`` is a real window ``t - H`` whose count is an integer inside (a); repeating it
(``k_t = k_{t-H}``) leaves ``D_t = D_{t-1}`` in ``[-B, B]``. During warm-up the leaving window is
virtual (deviation 0), so the allowed deviations of window ``t`` form an interval of width
``2B >= 1`` containing 0: it holds ``floor(q* n) - q* n`` or ``ceil(q* n) - q* n``, and both counts
lie in (a) by (ii). Steps 2-3 and the content score only choose *which* feasible count is used.

Monotonicity. For a fixed controller state ``k^_t`` is non-increasing in ``r0_t`` and the
nearest-integer projection onto a fixed interval is monotone, so even after the correction a window
with more retained audio never gets a higher pruning ratio than one with less would have got.

Limits. (1) Target outside the band: with ``rho_video > rho_max`` (or ``< rho_min``) condition (ii)
fails; the controller saturates at the band and the achieved retention misses the target by the
gap (e.g. ``rho_video = 0.8`` with ``rho_max = 0.75`` keeps 25 %, not 20 %); a warning is logged
once. At the band edge (``rho_video = rho_max``) there is no room left for content. (2) Unequal
windows (frames dropped upstream, a short last window): the repeated count of step "why" may not
exist, a step can be infeasible and the window falls back to the closest bound; the excess is at
most the size difference and disappears once that window leaves the horizon. (3) When the
constraint binds (a long run of information-dense windows) the content signal is clipped: the run
is held at ``q* + tau``. (4) The guarantee is over ``H`` consecutive *video-bearing* windows and
restarts (warm-up included) after :meth:`StreamingBudgetController.reset`.
"""

from __future__ import annotations

import logging
import math
from collections import deque

logger = logging.getLogger(__name__)

_SLACK = 1e-9


def base_video_ratio(retention: float, rho_min: float, rho_max: float) -> float:
    """Map a window's audio retention score to its base video pruning ratio (the reference's linear map).

    Args:
        retention: ``S_w`` in ``[0, 1]``.
        rho_min: lower bound of the ratio.
        rho_max: upper bound of the ratio.

    Returns:
        ``clip(rho_max + (rho_min - rho_max) * S_w, rho_min, rho_max)`` (fraction removed).
    """
    return max(rho_min, min(rho_max, rho_max + (rho_min - rho_max) * retention))


def frame_keep_count(tokens_per_frame: int, ratio: float) -> int:
    """Tokens a frame keeps at pruning ratio ``ratio``: ``floor(P * (1 - ratio))`` like the reference."""
    return int(tokens_per_frame * (1.0 - ratio))


def reference_video_ratios(
    retention: list[float],
    sizes: list[int],
    *,
    rho_video: float,
    rho_min: float,
    rho_max: float,
) -> list[float]:
    """Per-window video pruning ratios with the v2 reference re-normalisation (spec Stage C.3).

    Args:
        retention: ``C`` retention scores (``NaN`` for windows without audio).
        sizes: ``C`` video token counts per window.
        rho_video: global video pruning ratio.
        rho_min: lower bound of a window's ratio.
        rho_max: upper bound of a window's ratio.

    Returns:
        ``C`` ratios: guided windows (audio and video) re-normalised, unguided windows ``rho_video``,
        ``NaN`` for windows without video. Follows the reference literally, including its quirks:
        no re-normalisation with 2 or fewer guided windows; the first minimum and first maximum stay
        fixed (when all base ratios are equal they are the same window and count twice); one
        multiplicative and one additive clipped pass, no iteration.
    """
    if len(retention) != len(sizes):
        raise ValueError("retention and sizes must have one entry per window")
    guided = [i for i, (s, n) in enumerate(zip(retention, sizes, strict=True)) if n > 0 and not math.isnan(s)]
    out = [math.nan if n == 0 else rho_video for n in sizes]
    if not guided:
        return out
    gsize = [sizes[i] for i in guided]
    base = [base_video_ratio(retention[i], rho_min, rho_max) for i in guided]
    total = sum(sizes)
    unguided_total = total - sum(gsize)
    target_discard = rho_video * total
    guided_target = target_discard - rho_video * unguided_total
    adjusted = base.copy()
    ng = len(guided)
    if ng > 2 and sum(gsize) > 0:
        base_discard = sum(base[i] * gsize[i] for i in range(ng))
        if abs(base_discard - guided_target) > 1e-3 and base_discard > 0:
            lo = base.index(min(base))
            hi = base.index(max(base))
            others = [i for i in range(ng) if i != lo and i != hi]
            other_discard = sum(base[i] * gsize[i] for i in others)
            if others and other_discard > 0:
                fixed = base[lo] * gsize[lo] + base[hi] * gsize[hi]
                scaling = (guided_target - fixed) / other_discard
                for i in others:
                    adjusted[i] = max(rho_min, min(rho_max, base[i] * scaling))
                diff = guided_target - sum(adjusted[i] * gsize[i] for i in range(ng))
                if abs(diff) > 1e-3:
                    other_size = sum(gsize[i] for i in others)
                    if other_size > 0:
                        step = diff / other_size
                        for i in others:
                            adjusted[i] = max(rho_min, min(rho_max, adjusted[i] + step))
    for j, i in enumerate(guided):
        out[i] = adjusted[j]
    return out


def spread_over_frames(keep: int, num_frames: int) -> list[int]:
    """Split a window's keep count over its frames: ``floor(k / F)`` each, +1 for the first ``k mod F``."""
    if num_frames <= 0:
        return []
    q, r = divmod(int(keep), num_frames)
    return [q + (1 if f < r else 0) for f in range(num_frames)]


class StreamingBudgetController:
    """Online video budget of streaming OmniZip (see the module docstring for the math).

    Args:
        rho_video: target video pruning ratio (``q* = 1 - rho_video`` is kept).
        rho_min: lower bound of a window's ratio.
        rho_max: upper bound of a window's ratio.
        horizon: ``H``, the number of consecutive video windows the guarantee is about.
        tolerance: ``tau``, the allowed gap of the retention over any ``H`` windows (0.02 = 2 points).
    """

    def __init__(self, rho_video: float, rho_min: float, rho_max: float, horizon: int, tolerance: float) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if not 0.0 < tolerance < 1.0:
            raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
        self.rho_video = rho_video
        self.rho_min = rho_min
        self.rho_max = rho_max
        self.horizon = horizon
        self.tolerance = tolerance
        self.target = 1.0 - rho_video
        self._repay = max(1, horizon // 2)
        self._warned = False
        self.reset()

    def reset(self) -> None:
        """Forget the stream (start of a new one)."""
        self._hist: deque[tuple[int, int]] = deque(maxlen=max(0, self.horizon - 1))
        self._base_hist: deque[float] = deque(maxlen=max(0, self.horizon - 1))
        self._error = 0.0

    @property
    def cumulative_error(self) -> float:
        """``E``: kept video tokens minus the target, summed over the stream so far."""
        return self._error

    def base_ratio(self, retention: float | None) -> float:
        """Return the window's base ratio ``r0`` (``rho_video`` when it has no audio)."""
        if retention is None or math.isnan(retention):
            return self.rho_video
        return base_video_ratio(retention, self.rho_min, self.rho_max)

    def propose(self, retention: float | None, n_tokens: int) -> int:
        """Keep count the controller would choose for a window, without changing its state.

        Args:
            retention: the window's audio retention score ``S_t`` (``None``/NaN without audio).
            n_tokens: the window's video token count ``n_t``.

        Returns:
            ``k_t``, an integer in ``[0, n_t]``.
        """
        n = int(n_tokens)
        if n <= 0:
            return 0
        r0 = self.base_ratio(retention)
        mean_base = sum(self._base_hist) / len(self._base_hist) if self._base_hist else r0
        desired = (1.0 - (r0 - mean_base + self.rho_video)) * n - self._error / self._repay
        kmin = max(0, math.floor((1.0 - self.rho_max) * n + _SLACK))
        kmax = min(n, math.ceil((1.0 - self.rho_min) * n - _SLACK))
        virtual = self.horizon - 1 - len(self._hist)
        total = n + sum(m for m, _ in self._hist) + virtual * n
        dev_past = sum(k - self.target * m for m, k in self._hist)
        c_lo = math.ceil(self.target * n - self.tolerance * total - dev_past - _SLACK)
        c_hi = math.floor(self.target * n + self.tolerance * total - dev_past + _SLACK)
        lo, hi = max(kmin, c_lo), min(kmax, c_hi)
        if lo > hi:
            if not self._warned:
                logger.warning(
                    "video budget unreachable within [rho_min, rho_max] = [%.3f, %.3f] for target ratio %.3f "
                    "(window of %d tokens); keeping the closest bound",
                    self.rho_min, self.rho_max, self.rho_video, n,
                )
                self._warned = True
            return kmin if c_hi < kmin else kmax
        return int(min(hi, max(lo, math.ceil(desired - 0.5))))

    def step(self, retention: float | None, n_tokens: int, max_keep: int | None = None) -> int:
        """Decide a window's keep count and record it (windows are fed in stream order).

        Args:
            retention: the window's audio retention score ``S_t`` (``None``/NaN without audio).
            n_tokens: the window's video token count ``n_t``; 0 leaves the state unchanged.
            max_keep: at most this many tokens exist to keep (a window whose vision tower encoded a
                smaller grid than ``n_t``, see :mod:`omnizip.vision_budget`); the count actually kept
                is what is recorded, so any shortfall is repaid by the following windows.

        Returns:
            ``k_t``, the number of video tokens the window keeps.
        """
        n = int(n_tokens)
        if n <= 0:
            return 0
        k = self.propose(retention, n)
        if max_keep is not None:
            k = min(k, max(0, int(max_keep)))
        self._error += k - self.target * n
        if self.horizon > 1:
            self._hist.append((n, k))
            self._base_hist.append(self.base_ratio(retention))
        return k
