"""Saliency capture per call: QKCapture hooks on the shared audio layer never mix two calls' Q/K."""

from __future__ import annotations

import threading

import torch
from omni_helpers import synthetic_clip

from omnizip.adapters.capture import QKCapture
from omnizip.preprocess import log_mel


def _features(adapter, seed: int):
    wav, _ = synthetic_clip(2.0, seed=seed, video=False)
    return log_mel(wav, adapter.audio_cfg)


def _alone(core, attn, feats, mask):
    with torch.no_grad(), QKCapture(attn) as cap:
        core.get_audio_features(feats, feature_attention_mask=mask)
    return cap


def test_two_captures_open_at_once_on_the_shared_layer_each_see_only_their_own_call(adapter25, tiny25):
    core = tiny25.thinker.model
    attn = core.audio_tower.layers[-1].self_attn
    inputs = {name: _features(adapter25, seed) for name, seed in (("a", 1), ("b", 2))}
    want = {name: _alone(core, attn, *inputs[name]) for name in inputs}
    assert not torch.equal(want["a"].q, want["b"].q)
    # Both captures are registered before either call runs; a runs its encoder, then b runs its own.
    opened = {name: threading.Event() for name in inputs}
    a_done = threading.Event()
    got: dict[str, QKCapture] = {}
    errors: list[BaseException] = []

    def stream(name: str, other: str) -> None:
        try:
            with torch.no_grad(), QKCapture(attn) as cap:
                opened[name].set()
                assert opened[other].wait(10)
                if name == "b":
                    assert a_done.wait(10)
                core.get_audio_features(inputs[name][0], feature_attention_mask=inputs[name][1])
                if name == "a":
                    a_done.set()
                    assert got_b.wait(10)  # a's capture stays open while b's call runs
            got[name] = cap
            if name == "b":
                got_b.set()
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            got_b.set()

    got_b = threading.Event()
    threads = [threading.Thread(target=stream, args=("a", "b")), threading.Thread(target=stream, args=("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    for name in inputs:
        assert torch.equal(got[name].q, want[name].q) and torch.equal(got[name].k, want[name].k)
        assert got[name].block_lengths() == want[name].block_lengths()


def test_a_call_in_another_thread_is_not_recorded(adapter25, tiny25):
    core = tiny25.thinker.model
    attn = core.audio_tower.layers[-1].self_attn
    feats, mask = _features(adapter25, 3)
    with QKCapture(attn) as cap:
        worker = threading.Thread(target=lambda: _alone(core, attn, feats, mask))
        worker.start()
        worker.join(30)
        assert cap.q is None and cap.k is None and cap.cu_seqlens is None
        with torch.no_grad():
            core.get_audio_features(feats, feature_attention_mask=mask)
    assert cap.q is not None and torch.equal(cap.q, _alone(core, attn, feats, mask).q)
