"""The streaming budget controller: the 30-window guarantee, monotonicity and its documented limits."""

from __future__ import annotations

import copy
import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnizip.budget import StreamingBudgetController, spread_over_frames

H, TOL = 30, 0.02

# (video tokens per window, frames per window): Qwen2.5-Omni at 144 tokens/frame, small frames where
# the per-frame floor matters, and one token per frame.
SIZES = [(288, 2), (8, 2), (4, 1), (2, 2), (1, 1)]

retention = st.one_of(st.none(), st.floats(0.0, 1.0))


def _run(ctrl: StreamingBudgetController, scores: list[float | None], n: int, frames: int) -> list[int]:
    kept = []
    for s in scores:
        k = ctrl.step(s, n)
        per_frame = spread_over_frames(k, frames)
        assert sum(per_frame) == k and max(per_frame) <= n // frames  # the frames can hold it
        kept.append(k)
    return kept


def _assert_window_guarantee(kept: list[int], n: int, target: float, horizon: int = H, tol: float = TOL) -> None:
    for start in range(0, len(kept) - horizon + 1):
        achieved = sum(kept[start : start + horizon]) / (horizon * n)
        assert abs(achieved - target) <= tol + 1e-9, (start, achieved, target)
    # the stream's prefixes deviate by at most tol * H * n tokens
    for t in range(1, min(len(kept), horizon) + 1):
        assert abs(sum(kept[:t]) - target * t * n) <= tol * horizon * n + 1e-9


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(retention, min_size=H, max_size=4 * H),
    size=st.sampled_from(SIZES),
    rho_video=st.sampled_from([0.6, 0.7, 0.5, 0.4, 0.74]),
)
def test_any_30_windows_are_within_2_points(scores, size, rho_video) -> None:
    n, frames = size
    ctrl = StreamingBudgetController(rho_video, 0.35, 0.75, H, TOL)
    kept = _run(ctrl, scores, n, frames)
    _assert_window_guarantee(kept, n, 1 - rho_video)
    # the per-window count stays inside the ratio band (rounded outward to whole tokens)
    assert all(math.floor(0.25 * n + 1e-9) <= k <= math.ceil(0.65 * n - 1e-9) for k in kept)


@pytest.mark.parametrize("n, frames", SIZES)
def test_adversarial_content_runs(n: int, frames: int) -> None:
    # Long runs of information-dense windows, then of empty ones, then alternating: the content pushes
    # as hard as it can in one direction; the guarantee must still hold.
    scores = [1.0] * 70 + [0.0] * 70 + [1.0, 0.0] * 40 + [None] * 10
    ctrl = StreamingBudgetController(0.6, 0.35, 0.75, H, TOL)
    kept = _run(ctrl, scores, n, frames)
    _assert_window_guarantee(kept, n, 0.4)


def test_long_run_average_converges_to_the_target() -> None:
    scores = [0.9, 0.7, 0.75, 0.2, 0.74, 0.8] * 60
    ctrl = StreamingBudgetController(0.6, 0.35, 0.75, H, TOL)
    kept = _run(ctrl, scores, 288, 2)
    assert abs(sum(kept) / (288 * len(kept)) - 0.4) < 0.002
    assert abs(ctrl.cumulative_error) < 288


def test_content_still_steers_the_allocation() -> None:
    # Typical retention scores around .75 with a few information-dense windows: dense windows keep more.
    scores = [0.74, 0.76, 0.75, 0.95, 0.74, 0.75, 0.5, 0.76] * 10
    ctrl = StreamingBudgetController(0.6, 0.35, 0.75, H, TOL)
    kept = _run(ctrl, scores, 288, 2)
    dense = [k for s, k in zip(scores, kept, strict=True) if s == 0.95]
    sparse = [k for s, k in zip(scores, kept, strict=True) if s == 0.5]
    assert min(dense) > max(sparse)


@settings(max_examples=40, deadline=None)
@given(
    history=st.lists(retention, max_size=40),
    a=st.floats(0.0, 1.0),
    b=st.floats(0.0, 1.0),
    size=st.sampled_from(SIZES),
)
def test_more_retained_audio_never_prunes_more(history, a, b, size) -> None:
    n, frames = size
    ctrl = StreamingBudgetController(0.6, 0.35, 0.75, H, TOL)
    _run(ctrl, history, n, frames)
    lo, hi = min(a, b), max(a, b)
    # before the correction: the linear map
    assert ctrl.base_ratio(hi) <= ctrl.base_ratio(lo)
    # and after it, for windows that see the same controller state
    state = copy.deepcopy(ctrl)
    assert ctrl.propose(hi, n) >= ctrl.propose(lo, n)
    assert ctrl.propose(hi, n) == state.propose(hi, n)  # propose does not change the state


def test_unreachable_target_saturates_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    ctrl = StreamingBudgetController(0.8, 0.35, 0.75, H, TOL)
    with caplog.at_level(logging.WARNING, logger="omnizip.budget"):
        kept = [ctrl.step(0.5, 288) for _ in range(40)]
    assert kept == [72] * 40  # the band's edge: 25 % kept, the 20 % target is out of reach
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1


def test_windows_without_video_do_not_count_and_reset_forgets() -> None:
    ctrl = StreamingBudgetController(0.6, 0.35, 0.75, H, TOL)
    first = [ctrl.step(s, 288) for s in (0.9, 0.1, 0.5)]
    assert ctrl.step(0.9, 0) == 0
    ctrl.reset()
    assert ctrl.cumulative_error == 0.0
    assert [ctrl.step(s, 288) for s in (0.9, 0.1, 0.5)] == first


def test_spread_over_frames() -> None:
    assert spread_over_frames(7, 3) == [3, 2, 2]
    assert spread_over_frames(1, 2) == [1, 0]
    assert spread_over_frames(0, 2) == [0, 0]
    assert spread_over_frames(5, 0) == []


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        StreamingBudgetController(0.6, 0.35, 0.75, 0, TOL)
    with pytest.raises(ValueError):
        StreamingBudgetController(0.6, 0.35, 0.75, H, 0.0)
