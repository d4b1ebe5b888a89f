#!/usr/bin/env python
"""Question latency of one stream over HTTP (SSE first chunk) vs in-process vs MQTT, in one run.

    python scripts/bench_http.py --n 30 --out results/http_latency.json
    python scripts/bench_http.py --model Qwen/Qwen2.5-Omni-3B --device cuda --n 30

One StreamServer (the model of ``--model``) serves one replayed synthetic stream (``--seconds`` of it,
ingested before timing starts, so every question sees the same cache). The same question is then asked
round-robin, ``--n`` times per transport after ``--warmup``:

- ``in_process``: ``session.ask_stream`` -> first text piece;
- ``http``: ``POST /v1/chat/completions`` with ``stream: true`` over a real uvicorn socket (httpx) ->
  first SSE chunk with content, and -> ``data: [DONE]``;
- ``mqtt``: ``MqttQueryClient.ask(stream=True)`` through the embedded broker -> first partial, -> final.

Each question's time to first token on the model thread (``ttft_ms``) is recorded too; the transport
overhead is the first-piece latency minus the in-process one. The clients run on the server's event
loop (one process), as in ``bench_mqtt_latency.py``. Writes JSON (stdout, and ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

from omnizip_stream.bench.report import emit_json
from omnizip_stream.config import StreamConfig
from omnizip_stream.http.runner import serve_http
from omnizip_stream.http.settings import HttpSettings
from omnizip_stream.query.broker import EmbeddedBroker
from omnizip_stream.query.mqtt import MqttConfig, MqttQueryServer
from omnizip_stream.query.mqtt_client import MqttQueryClient
from omnizip_stream.server.config import ServerConfig, ServerSettings, StreamSpec
from omnizip_stream.server.service import StreamServer

QUESTION = "What is happening in the stream right now?"


def percentiles(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)

    def q(p: float) -> float:
        return s[min(len(s) - 1, round(p * (len(s) - 1)))]

    return {"n": len(s), "p50": round(q(0.5), 3), "p90": round(q(0.9), 3), "max": round(s[-1], 3),
            "mean": round(statistics.fmean(s), 3)}


async def ask_in_process(session: Any, max_tokens: int) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    first = None
    stream = session.ask_stream(QUESTION, max_tokens)
    async for _piece in stream:
        first = first or time.perf_counter()
    t1 = time.perf_counter()
    return (first or t1) - t0, t1 - t0, stream.answer.ttft_ms


async def ask_http(client: httpx.AsyncClient, max_tokens: int) -> tuple[float, float, float]:
    body = {"model": "bench", "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": QUESTION}]}
    t0 = time.perf_counter()
    first, ttft_ms = None, float("nan")
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if "omnizip" in chunk:
                ttft_ms = chunk["omnizip"]["ttft_ms"]
    t1 = time.perf_counter()
    return (first or t1) - t0, t1 - t0, ttft_ms


async def ask_mqtt(client: MqttQueryClient, max_tokens: int) -> tuple[float, float, float]:
    seen: list[float] = []
    t0 = time.perf_counter()
    reply = await client.ask(QUESTION, max_new_tokens=max_tokens, stream=True, timeout_s=300,
                             on_partial=lambda _d: seen.append(time.perf_counter()))
    t1 = time.perf_counter()
    return (seen[0] if seen else t1) - t0, t1 - t0, float(reply.get("ttft_ms", float("nan")))


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    cfg = StreamConfig(model=args.model, device=args.device, method="omnizip", max_new_tokens=args.max_tokens,
                       video_max_pixels=args.video_max_pixels)
    spec = StreamSpec("bench", "synthetic:seed=1", cfg, realtime=False, duration_s=args.seconds, max_side=224)
    config = ServerConfig(cfg, ServerSettings(), (spec,))
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(StreamServer(config))
        await server.stream("bench").wait()  # every window ingested: the questions see one fixed cache
        session = server.session("bench")
        service = await stack.enter_async_context(serve_http(server, HttpSettings(port=0)))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=service.url, timeout=300))
        broker = await stack.enter_async_context(EmbeddedBroker())
        protocol = "5" if broker.supports_v5 else "3.1.1"
        mqtt_cfg = MqttConfig.from_url(broker.url, stream_id="bench", protocol=protocol, rate_limit_per_s=0.0)
        mqtt_server = MqttQueryServer(session, mqtt_cfg)
        task = asyncio.ensure_future(mqtt_server.run())
        stack.push_async_callback(_cancel, task)
        await mqtt_server.wait_connected(20)
        mqtt = await stack.enter_async_context(MqttQueryClient(mqtt_cfg))
        runs = {"in_process": lambda: ask_in_process(session, args.max_tokens),
                "http": lambda: ask_http(http, args.max_tokens),
                "mqtt": lambda: ask_mqtt(mqtt, args.max_tokens)}
        samples: dict[str, dict[str, list[float]]] = {k: {"first": [], "total": [], "ttft": []} for k in runs}
        for i in range(args.warmup + args.n):
            for name, run in runs.items():
                first_s, total_s, ttft_ms = await run()
                if i >= args.warmup:
                    samples[name]["first"].append(first_s * 1e3)
                    samples[name]["total"].append(total_s * 1e3)
                    samples[name]["ttft"].append(ttft_ms)
        stats = session.stats()
    results = {name: {"first_piece_ms": percentiles(s["first"]), "answer_ms": percentiles(s["total"]),
                      "model_ttft_ms": percentiles(s["ttft"])} for name, s in samples.items()}
    base = results["in_process"]["first_piece_ms"]["p50"]
    for name in ("http", "mqtt"):
        results[name]["overhead_vs_in_process_p50_ms"] = round(results[name]["first_piece_ms"]["p50"] - base, 3)
    return {
        "benchmark": "question_latency_by_transport", "model": args.model, "device": args.device,
        "question": QUESTION, "max_tokens": args.max_tokens, "n": args.n, "warmup": args.warmup,
        "stream_seconds": args.seconds, "kv_tokens": stats.get("kv_tokens"),
        "windows_ingested": stats.get("windows_ingested"), "broker": broker.kind, "mqtt_protocol": protocol,
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("fastapi", "uvicorn", "httpx", "aiomqtt", "torch")},
        "results": results,
    }


async def _cancel(task: asyncio.Future[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0, help="stream seconds ingested before the questions")
    p.add_argument("--video-max-pixels", type=int, default=56 * 56)
    p.add_argument("--out", type=Path, help="write the JSON here too")
    p.add_argument("--browser-seconds", type=float, default=0.0,
                   help="also stream the page's fake camera this long: browser-to-window latency (bench_webrtc.py)")
    args = p.parse_args()
    result = asyncio.run(bench(args))
    if args.browser_seconds > 0:
        from bench_webrtc import measure  # scripts/ is on sys.path when this script runs

        result["browser_to_window"] = asyncio.run(measure(model=args.model, device=args.device,
                                                          seconds=args.browser_seconds))
    emit_json(result, args.out)
    for name, entry in result["results"].items():
        f = entry["first_piece_ms"]
        print(f"{name:10s} first piece p50 {f['p50']:8.2f} ms  p90 {f['p90']:8.2f} ms  "
              f"(model ttft p50 {entry['model_ttft_ms']['p50']:.2f} ms)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
