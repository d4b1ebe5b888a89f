"""Encoder batching across streams (issue 14): ``encode_av_many`` batched vs one at a time, same run.

Usage: ``python scripts/bench_encode_many.py [--model tiny] [--streams 8] [--window-s 2] [--repeats 7]``.
Each repeat encodes one window of every stream (audio + frames of a different synthetic stream each,
second window of the stream so the log-mel has left context), first one request at a time, then
batched (the order alternates between repeats); prints the medians and their ratio as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from omnizip.adapters.base import AVCursor
from omnizip.adapters.batch_encode import EncodeRequest, encode_av_many
from omnizip.adapters.loading import load_adapter


def _requests(n_streams: int, window_s: float, fps: float, size: tuple[int, int]) -> list[EncodeRequest]:
    out = []
    n = int(window_s * 16000)
    n_frames = int(round(window_s * fps))
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for s in range(n_streams):
        rng = np.random.default_rng(s)
        t = np.arange(2 * n) / 16000
        wav = (0.2 * np.sin(2 * np.pi * (220 + 40 * s) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
        frames = np.stack([np.stack([(xx * 2 + 9 * i + s) % 256, (yy * 3 + 5 * i) % 256,
                                     rng.integers(0, 256, (h, w))], -1) for i in range(n_frames)]).astype(np.uint8)
        cursor = AVCursor(10 + s, 50, n_frames // 2, wav[n - 400:n], 0.5)
        out.append(EncodeRequest(wav[n:], frames, cursor))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_encode_many.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    adapter = load_adapter(args.model, device=args.device, dtype=args.dtype)
    reqs = _requests(args.streams, args.window_s, adapter.spec.fps, (112, 112))
    sync = torch.cuda.synchronize if adapter.device.type == "cuda" else (lambda: None)
    encode_av_many(adapter, reqs, batched=False)  # warm-up both paths
    encode_av_many(adapter, reqs)
    times: dict[str, list[float]] = {"one_at_a_time_s": [], "batched_s": []}
    for rep in range(args.repeats):
        order = [False, True] if rep % 2 == 0 else [True, False]
        for batched in order:
            sync()
            t0 = time.perf_counter()
            encode_av_many(adapter, reqs, batched=batched)
            sync()
            times["batched_s" if batched else "one_at_a_time_s"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "model": args.model, "device": str(adapter.device), "dtype": args.dtype, "streams": args.streams,
        "window_s": args.window_s, "repeats": args.repeats, "threads": torch.get_num_threads(),
        **{k: round(v, 4) for k, v in med.items()},
        "speedup": round(med["one_at_a_time_s"] / med["batched_s"], 3),
        "windows_per_s_batched": round(args.streams / med["batched_s"], 2),
        "windows_per_s_one_at_a_time": round(args.streams / med["one_at_a_time_s"], 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
