#!/usr/bin/env python
"""Browser-to-window latency: a frame captured by the browser's (fake) camera -> its window ingested.

    python scripts/bench_webrtc.py --seconds 20 --out results/webrtc_latency.json
    python scripts/bench_webrtc.py --model Qwen/Qwen2.5-Omni-3B --device cuda --seconds 30

One StreamServer (``--model``) with its HTTP API and the web page; Debian's headless Chromium opens the
page and presses "Use my camera" with Chromium's fake camera and microphone reading generated files
(``omnizip_stream.web.chromium``). The browser's camera + microphone reach the server over WebRTC
(aiortc) and become a live stream. For every window of that stream:

- ``arrival``: when the window's last video frame, decoded, reached the webrtc source;
- ``ingested``: when the window was in the model's cache (``session.wait_windows`` returned);
- ``capture``: when the browser captured that frame. The browser's RTCP sender reports map RTP
  timestamps to the *sender's* NTP clock, which Chromium does not keep on the wall clock (measured here:
  a constant offset of hours), so the offset is estimated as the smallest ``arrival - capture`` of the
  run: the fastest frame is taken to have crossed in 0 ms. ``capture_to_ingested_ms`` is therefore a
  lower bound, short by that fastest frame's encode + loopback + jitter buffer + decode time (a few ms
  to tens of ms on one machine); its spread and ``capture_to_arrival_ms`` (transit beyond the fastest
  frame) are exact. ``arrival_to_ingested_ms`` is exact (one clock).

A window's earliest frames are older by up to the window length: that is the windowing, not a delay,
so each window is measured by its last frame. Writes JSON (stdout, and ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from omnizip_stream.bench.report import emit_json
from omnizip_stream.config import StreamConfig
from omnizip_stream.http.runner import serve_http
from omnizip_stream.http.settings import HttpSettings
from omnizip_stream.server.config import ServerConfig, ServerSettings
from omnizip_stream.server.service import StreamServer
from omnizip_stream.web.chromium import chromium_args, chromium_path, make_fake_camera, make_fake_microphone


def percentiles(xs: list[float]) -> dict[str, float] | None:
    """n, p50, p90, max, mean of ``xs`` (None when empty)."""
    if not xs:
        return None
    s = sorted(xs)

    def q(p: float) -> float:
        return s[min(len(s) - 1, round(p * (len(s) - 1)))]

    return {"n": len(s), "p50": round(q(0.5), 1), "p90": round(q(0.9), 1), "max": round(s[-1], 1),
            "mean": round(statistics.fmean(s), 1)}


def window_latency(report: Any, ingested_wall_s: float, frame_log: list[Any]) -> dict[str, Any]:
    """One window's timings from the peer's frame log (frames whose session time falls in the window)."""
    frames = [f for f in frame_log if report.t0_s <= f.pts_s < report.t1_s]
    out: dict[str, Any] = {"index": report.index, "t0_s": round(report.t0_s, 3), "t1_s": round(report.t1_s, 3),
                           "audio_tokens": report.audio_tokens, "video_tokens": report.video_tokens,
                           "frames": len(frames), "ingested_wall_s": ingested_wall_s}
    if frames:
        last = frames[-1]
        out["arrival_wall_s"] = last.arrival_wall_s
        out["sender_capture_s"] = last.sender_capture_s  # on the browser's RTCP clock
        out["arrival_to_ingested_ms"] = round((ingested_wall_s - last.arrival_wall_s) * 1e3, 1)
        # the window's media was complete (its end reached the server) at about:
        end_wall_s = last.arrival_wall_s + (report.t1_s - last.pts_s)
        out["window_end_to_ingested_ms"] = round((ingested_wall_s - end_wall_s) * 1e3, 1)
    return out


def apply_capture_offset(windows: list[dict[str, Any]], frame_log: list[Any]) -> float | None:
    """Put sender capture times on this machine's clock (the fastest frame of the run crossed in 0 ms).

    Returns the estimated offset (s), or None when the browser sent no RTCP sender report.
    """
    transits = [f.arrival_wall_s - f.sender_capture_s for f in frame_log if f.sender_capture_s is not None]
    if not transits:
        return None
    offset_s = min(transits)
    for w in windows:
        if w.get("sender_capture_s") is not None:
            capture_s = w["sender_capture_s"] + offset_s
            w["capture_to_arrival_ms"] = round((w["arrival_wall_s"] - capture_s) * 1e3, 1)
            w["capture_to_ingested_ms"] = round((w["ingested_wall_s"] - capture_s) * 1e3, 1)
    return offset_s


async def measure(*, model: str = "tiny", device: str | None = None, seconds: float = 20.0, camera_fps: int = 15
                  ) -> dict[str, Any]:
    """Stream the fake camera for ``seconds`` (wall clock) and time every window (see the module docstring).

    Also ``scripts/bench_http.py --browser-seconds S``.
    """
    from playwright.async_api import async_playwright

    browser_path = chromium_path()
    if browser_path is None:
        raise SystemExit("bench_webrtc: no system Chromium (apt-get install chromium)")
    tmp = Path(tempfile.mkdtemp(prefix="bench_webrtc_"))
    camera = make_fake_camera(tmp / "camera.y4m", seconds=4.0, rate=camera_fps, width=640, height=480)
    microphone = make_fake_microphone(tmp / "microphone.wav", seconds=4.0)
    overrides: dict[str, Any] = {"method": "omnizip", "max_new_tokens": 8}
    if model == "tiny":
        overrides.update(video_max_pixels=56 * 56, max_question_tokens=32)
    if device:
        overrides["device"] = device
    config = StreamConfig(model=model, **overrides)
    windows: list[dict[str, Any]] = []
    async with StreamServer(ServerConfig(config, ServerSettings(), ())) as server, \
            serve_http(server, HttpSettings(port=0)) as service, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=browser_path, args=chromium_args(camera, microphone),
                                           chromium_sandbox=False)
        try:
            page = await browser.new_page()
            await page.goto(service.url)
            await page.click("#use-camera")
            stream_id = await (await page.wait_for_function("() => window.omnizip.ownStream",
                                                            timeout=60_000)).json_value()
            session = server.session(stream_id)
            peer = service.app.state.web.peers[stream_id]
            seen = -1
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                try:
                    await asyncio.wait_for(session.wait_windows(count=len(windows) + 1), 30)
                except asyncio.TimeoutError:
                    break
                ingested = time.time()
                for report in list(session.reports):
                    if report.index > seen:
                        windows.append(window_latency(report, ingested, list(peer.frame_log)))
                        seen = report.index
            stats = session.stats()
            offset_s = apply_capture_offset(windows, list(peer.frame_log))
        finally:
            await browser.close()
    measured = windows[1:]  # the first window includes the connection's start-up
    return {
        "benchmark": "browser_to_window_latency",
        "model": model, "device": device or "default", "window_s": config.window_s,
        "camera_fps": camera_fps, "seconds": seconds,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                    "chromium": _chromium_version(browser_path)},
        "sender_clock_offset_s": None if offset_s is None else round(offset_s, 3),
        "capture_to_ingested_is": "a lower bound (short by the fastest frame's transit; see the docstring)",
        "windows": len(windows),
        "windows_with_audio_and_video": sum(1 for w in windows if w["audio_tokens"] and w["video_tokens"]),
        "capture_to_ingested_ms": percentiles([w["capture_to_ingested_ms"] for w in measured
                                               if "capture_to_ingested_ms" in w]),
        "capture_to_arrival_ms": percentiles([w["capture_to_arrival_ms"] for w in measured
                                              if "capture_to_arrival_ms" in w]),
        "arrival_to_ingested_ms": percentiles([w["arrival_to_ingested_ms"] for w in measured
                                               if "arrival_to_ingested_ms" in w]),
        "window_end_to_ingested_ms": percentiles([w["window_end_to_ingested_ms"] for w in measured
                                                  if "window_end_to_ingested_ms" in w]),
        "video_dropped": (stats.get("source") or {}).get("video_dropped", stats.get("video_dropped")),
        "per_window": windows,
    }


def _chromium_version(path: str) -> str:
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="model name (default: the built-in tiny model)")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: the model's default)")
    parser.add_argument("--seconds", type=float, default=20.0, help="stream this long (wall clock)")
    parser.add_argument("--camera-fps", type=int, default=15, help="the fake camera's frame rate")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    result = asyncio.run(measure(model=args.model, device=args.device, seconds=args.seconds,
                                 camera_fps=args.camera_fps))
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
