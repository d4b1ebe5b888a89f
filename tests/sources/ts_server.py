"""A simulated IP camera: serves live MPEG-TS (h264 + aac) over TCP, one client per session.

Usage: python ts_server.py PORT SECONDS_PER_SESSION SESSIONS [PAUSE_S [GOP [JOIN_S]]]
Each session listens on 127.0.0.1:PORT, waits for a client, streams SECONDS of a moving square and a
440 Hz tone paced in real time, then closes the connection; PAUSE_S seconds pass before the next
session listens. "listening" is printed (flushed) just before each session starts listening.
GOP is the keyframe interval in frames (default: one per second); with JOIN_S > 0 the client joins a
running camera: the first JOIN_S seconds are encoded but not sent, so the stream starts mid-GOP.
"""

from __future__ import annotations

import sys
import time
from fractions import Fraction

import av
import numpy as np

RATE = 15
AUDIO_RATE = 48000
W, H = 160, 120


def serve_once(port: int, seconds: float, gop: int = RATE, join_s: float = 0.0) -> None:
    print("listening", flush=True)
    out = av.open(f"tcp://127.0.0.1:{port}?listen=1", "w", format="mpegts")
    vs = out.add_stream("libx264", rate=RATE)
    vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
    vs.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(gop)}
    aus = out.add_stream("aac", rate=AUDIO_RATE)
    aus.layout = "mono"
    n_join = int(join_s * RATE)
    t0 = time.monotonic() - join_s
    n_audio = 0
    try:
        for i in range(int(seconds * RATE)):
            due = t0 + i / RATE
            time.sleep(max(0.0, due - time.monotonic()))
            sent = i >= n_join
            img = np.zeros((H, W, 3), np.uint8)
            x = (i * 4) % (W - 20)
            img[40:60, x:x + 20] = (255, 200, 0)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, RATE)
            for p in vs.encode(frame):
                if sent:
                    out.mux(p)
            target = int((i + 1) / RATE * AUDIO_RATE)
            while n_audio < target:
                n = min(1024, target - n_audio)
                t = np.arange(n_audio, n_audio + n) / AUDIO_RATE
                a = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :],
                                               format="fltp", layout="mono")
                a.sample_rate, a.pts, a.time_base = AUDIO_RATE, n_audio, Fraction(1, AUDIO_RATE)
                n_audio += n
                for p in aus.encode(a):
                    if sent:
                        out.mux(p)
        for s in (vs, aus):
            for p in s.encode():
                out.mux(p)
    except (av.FFmpegError, OSError):
        pass  # the client went away
    finally:
        try:
            out.close()
        except (av.FFmpegError, OSError):
            pass


def main() -> None:
    port, seconds, sessions = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    pause_s = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    gop = int(sys.argv[5]) if len(sys.argv) > 5 else RATE
    join_s = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    for k in range(sessions):
        if k:
            time.sleep(pause_s)
        serve_once(port, seconds, gop, join_s)


if __name__ == "__main__":
    main()
