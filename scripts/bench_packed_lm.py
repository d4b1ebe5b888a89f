"""Packed text-model calls across streams vs one at a time (issue 14): prefill and decode throughput.

Usage: ``python scripts/bench_packed_lm.py [--model tiny|tiny-qwen3] [--streams 8] [--chunk-tokens 200]
[--decode-tokens 16] [--repeats 9] [--threads 1] [--out result.json]``.

Each stream has its own cache (lengths spread over ``--cache-tokens``); every repetition times
``forward_many`` (8 chunks, one per stream) and ``greedy_decode_many`` (one answer per stream, stop tokens
disabled so every answer has ``--decode-tokens`` tokens) batched and one at a time, alternately, on the
same caches (each cache is put back after every call). Reports medians and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from omnizip.adapters.batch_decode import DecodeJob, greedy_decode_many
from omnizip.adapters.batch_forward import ForwardItem, forward_many
from omnizip.adapters.loading import _wrap
from omnizip.testing import tiny_qwen2_5_omni, tiny_qwen3_omni

MODELS = {"tiny": tiny_qwen2_5_omni, "tiny-qwen3": tiny_qwen3_omni}


def _snapshot(cache):
    return [(layer.keys, layer.values) for layer in cache.layers]


def _restore(cache, saved) -> None:
    for layer, (k, v) in zip(cache.layers, saved, strict=True):
        layer.keys, layer.values = k, v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_packed_lm.py", description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--chunk-tokens", type=int, default=200)
    ap.add_argument("--cache-tokens", default="200,1600", help="min,max cache length over the streams")
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = MODELS[args.model](seed=0)
    adapter = _wrap(bundle.family, bundle.thinker, bundle.tokenizer, {"model_name": args.model, "system_prompt": ""})
    adapter.eos_token_ids = lambda: set()  # every answer runs to --decode-tokens
    gen = torch.Generator().manual_seed(0)
    d = adapter.spec.hidden_size
    lo, hi = (int(x) for x in args.cache_tokens.split(","))
    lengths = [lo + (hi - lo) * i // max(1, args.streams - 1) for i in range(args.streams)]
    caches, prompt_logits = [], []
    for n in lengths:
        cache = adapter.new_cache()
        prompt_logits.append(adapter.forward(torch.randn(n, d, generator=gen), adapter.positions_1d(list(range(n))), cache))
        caches.append(cache)
    saved = [_snapshot(c) for c in caches]
    chunks = [(torch.randn(args.chunk_tokens, d, generator=gen),
               adapter.positions_1d([n + i for i in range(args.chunk_tokens)])) for n in lengths]

    def prefill(batched: bool) -> float:
        items = [ForwardItem(e, p, c) for (e, p), c in zip(chunks, caches, strict=True)]
        t0 = time.perf_counter()
        forward_many(adapter, items, batched=batched)
        dt = time.perf_counter() - t0
        for c, s in zip(caches, saved, strict=True):
            _restore(c, s)
        return dt

    def decode(batched: bool) -> float:
        jobs = [DecodeJob(c, lg, float(n), args.decode_tokens)
                for c, lg, n in zip(caches, prompt_logits, lengths, strict=True)]
        t0 = time.perf_counter()
        out = greedy_decode_many(adapter, jobs, batched=batched)
        dt = time.perf_counter() - t0
        assert all(len(g.token_ids) == args.decode_tokens for g in out if not isinstance(g, BaseException))
        for c, s in zip(caches, saved, strict=True):
            _restore(c, s)
        return dt

    times: dict[str, list[float]] = {k: [] for k in ("prefill_ref", "prefill_packed", "decode_ref", "decode_packed")}
    prefill(True), prefill(False), decode(True), decode(False)  # warm-up
    for _ in range(args.repeats):
        times["prefill_ref"].append(prefill(False))
        times["prefill_packed"].append(prefill(True))
        times["decode_ref"].append(decode(False))
        times["decode_packed"].append(decode(True))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    result = {
        "model": args.model, "streams": args.streams, "chunk_tokens": args.chunk_tokens, "cache_tokens": lengths,
        "decode_tokens": args.decode_tokens, "repeats": args.repeats, "threads": args.threads,
        "torch": torch.__version__, "median_ms": {k: round(v, 2) for k, v in med.items()},
        "prefill_speedup": round(med["prefill_ref"] / med["prefill_packed"], 2),
        "decode_speedup": round(med["decode_ref"] / med["decode_packed"], 2),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
