#!/usr/bin/env python
"""MQTT query round-trip latency with an instant fake session (transport overhead only).

    python scripts/bench_mqtt_latency.py --n 200 --out results/mqtt_latency.json

Starts an embedded broker unless --broker is given, runs the MqttQueryServer with a session that
answers immediately, and times sequential questions from MqttQueryClient: request published ->
final reply received (and, for streamed questions, -> first partial). Writes JSON with percentiles
and the resolved config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

from omnizip_stream.bench.report import emit_json
from omnizip_stream.query.base import Answer
from omnizip_stream.query.broker import EmbeddedBroker, find_mosquitto
from omnizip_stream.query.mqtt import MqttConfig, MqttQueryServer
from omnizip_stream.query.mqtt_client import MqttQueryClient


class InstantService:
    """Answers at once; ask_stream yields four deltas."""

    async def ask(self, question: str, max_new_tokens: int = 64) -> Answer:
        return Answer(f"echo: {question}", 0.0, 0.0, (0, 0), (0.0, 2.0), 2)

    async def ask_stream(self, question: str, max_new_tokens: int = 64) -> AsyncIterator[str]:
        for piece in ("echo", ":", " ", question):
            yield piece

    def stats(self) -> dict[str, Any]:
        return {}


def percentiles(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)

    def q(p: float) -> float:
        return s[min(len(s) - 1, round(p * (len(s) - 1)))]

    return {"n": len(s), "p50": q(0.5), "p90": q(0.9), "p95": q(0.95), "p99": q(0.99), "max": s[-1],
            "mean": statistics.fmean(s)}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        url = args.broker
        broker_kind = "external"
        if url is None:
            broker = await stack.enter_async_context(EmbeddedBroker())
            url, broker_kind = broker.url, broker.kind or "?"
        protocols = ["5", "3.1.1"] if args.protocol == "both" else [args.protocol]
        server_cfg = MqttConfig.from_url(url, stream_id="bench", rate_limit_per_s=0.0, max_queued_queries=256)
        server = MqttQueryServer(InstantService(), server_cfg)
        task = asyncio.ensure_future(server.run())
        stack.push_async_callback(_cancel, task)
        await server.wait_connected(10)
        results: dict[str, Any] = {}
        for protocol in protocols:
            async with MqttQueryClient(MqttConfig.from_url(url, stream_id="bench", protocol=protocol)) as client:
                for mode in ("ask", "stream"):
                    rtt, first, server_ms = [], [], []
                    for i in range(args.warmup + args.n):
                        t0 = time.perf_counter()
                        seen: list[float] = []
                        reply = await client.ask(
                            f"q{i}", stream=mode == "stream", timeout_s=10,
                            on_partial=(lambda _d, seen=seen: seen.append(time.perf_counter()))
                            if mode == "stream" else None,
                        )
                        t1 = time.perf_counter()
                        if i >= args.warmup:
                            rtt.append((t1 - t0) * 1e3)
                            server_ms.append(reply["server_ms"])
                            if seen:
                                first.append((seen[0] - t0) * 1e3)
                    entry = {"round_trip_ms": percentiles(rtt), "server_ms": percentiles(server_ms)}
                    if first:
                        entry["first_partial_ms"] = percentiles(first)
                    results[f"mqtt{protocol}_{mode}"] = entry
        return {
            "benchmark": "mqtt_query_latency",
            "broker": broker_kind, "broker_url": url, "mosquitto": _mosquitto_version(),
            "aiomqtt": version("aiomqtt"), "paho_mqtt": version("paho-mqtt"),
            "python": platform.python_version(), "n": args.n, "warmup": args.warmup,
            "service": "instant fake (transport overhead only)",
            "config": server_cfg.redacted(), "results": results,
        }


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _mosquitto_version() -> str | None:
    binary = find_mosquitto()
    if binary is None:
        return None
    out = subprocess.run([binary, "-h"], capture_output=True, text=True).stdout.splitlines()
    return out[0] if out else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", help="mqtt://HOST:PORT (default: embedded mosquitto)")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--protocol", choices=["5", "3.1.1", "both"], default="both")
    p.add_argument("--out", type=Path, help="write the JSON here (default: stdout only)")
    args = p.parse_args()
    result = asyncio.run(bench(args))
    emit_json(result, args.out)
    for name, entry in result["results"].items():
        r = entry["round_trip_ms"]
        print(f"{name:16s} round trip p50 {r['p50']:.3f} ms  p95 {r['p95']:.3f} ms  max {r['max']:.3f} ms",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
