"""greedy_decode_many: one token of every unfinished answer per packed call == one answer at a time (fp32)."""

from __future__ import annotations

import pytest
from batch_helpers import CallCounter, assert_caches_close, prefilled_caches

from omnizip.adapters.batch_decode import DecodeJob, greedy_decode_many
from omnizip.adapters.generation import Generation

LENGTHS = [3, 11, 1, 6]


@pytest.fixture(params=["adapter25", "adapter3"])
def adapter(request):
    return request.getfixturevalue(request.param)


class Boom(RuntimeError):
    pass


def _jobs(adapter, max_new, *, raise_after=None, seed=0):
    """Jobs on prompts of LENGTHS tokens; job ``raise_after[0]``'s on_text raises at piece ``raise_after[1]``."""
    caches, logits = prefilled_caches(adapter, LENGTHS, seed=seed)
    pieces: list[list[str]] = [[] for _ in LENGTHS]

    def sink(i):
        def on_text(piece):
            pieces[i].append(piece)
            if raise_after is not None and raise_after[0] == i and len(pieces[i]) == raise_after[1]:
                raise Boom(f"job {i}")
        return on_text

    jobs = [DecodeJob(c, lg, float(n), m, on_text=sink(i))
            for i, (c, lg, n, m) in enumerate(zip(caches, logits, LENGTHS, max_new, strict=True))]
    return jobs, pieces


def _check_same(adapter, max_new, raise_after=None):
    ref_jobs, ref_pieces = _jobs(adapter, max_new, raise_after=raise_after)
    ref = greedy_decode_many(adapter, ref_jobs, batched=False)
    jobs, pieces = _jobs(adapter, max_new, raise_after=raise_after)
    with CallCounter(adapter.thinker.model.language_model) as counter:
        got = greedy_decode_many(adapter, jobs)
    for g, r in zip(got, ref, strict=True):
        assert type(g) is type(r)
        if isinstance(r, Generation):
            assert (g.token_ids, g.text, g.stopped) == (r.token_ids, r.text, r.stopped)
        else:
            assert str(g) == str(r)
    assert pieces == ref_pieces
    for j, rj in zip(jobs, ref_jobs, strict=True):
        assert_caches_close(j.cache, rj.cache)
    return ref, counter.calls


def test_batched_decode_equals_one_at_a_time(adapter):
    max_new = [16, 3, 1, 9]
    ref, calls = _check_same(adapter, max_new)
    assert all(isinstance(r, Generation) for r in ref)
    forwarded = [len(r.token_ids) - (0 if r.stopped else 1) for r in ref]
    assert calls == max(forwarded), "one packed call per decoding step"
    assert sum(forwarded) > calls


def test_a_raising_on_text_ends_only_its_job(adapter):
    ref, calls = _check_same(adapter, [12, 12, 12, 12], raise_after=(1, 2))
    assert isinstance(ref[1], Boom)
    assert all(isinstance(r, Generation) for i, r in enumerate(ref) if i != 1)


def test_jobs_stop_at_their_own_stop_token(adapter, monkeypatch):
    """A stop token met by one job mid-answer ends that job alone (the stop set comes from the adapter)."""
    jobs, _ = _jobs(adapter, [12] * 4)
    (first, *_) = greedy_decode_many(adapter, jobs[:1], batched=False)
    assert isinstance(first, Generation) and len(first.token_ids) >= 4
    stop = first.token_ids[3]
    if stop in first.token_ids[:3]:
        pytest.skip("the tiny model repeats the token")
    monkeypatch.setattr(adapter, "eos_token_ids", lambda: {stop})
    ref, _ = _check_same(adapter, [12, 12, 0, 12])
    assert ref[0].stopped and len(ref[0].token_ids) == 3
    assert ref[2] == Generation([], "", False)
