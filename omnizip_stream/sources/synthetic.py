"""A deterministic synthetic scene and soundtrack, so a machine without a camera runs the whole pipeline.

Video: a seeded colour gradient with a square moving on a Lissajous path, a second bouncing bar and a
frame-counter strip. Audio: a steady tone plus a short higher beep every ``beep_every_s``. Every frame
and every sample is a pure function of ``(params, index)``: the same seed and parameters always give
the same media, however it is chunked or paced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from omnizip_stream.clock import Clock
from omnizip_stream.sources._buffer import ThreadedSource
from omnizip_stream.sources.base import SAMPLE_RATE_HZ, AudioChunk, SourceError, StreamCounters, VideoFrame
from omnizip_stream.windowing import FrameSampler


@dataclass(frozen=True)
class SyntheticParams:
    """Parameters of the synthetic source (all of them spec-settable: ``synthetic:seed=3,size=160x120``).

    Attributes:
        seed: picks colours, motion and the beep pitch.
        width / height: frame size in pixels.
        rate_hz: video frame rate before fps sampling.
        tone_hz: frequency of the steady tone.
        beep_every_s / beep_s: beep period and length, seconds.
        amplitude: tone amplitude in [0, 1] (beeps add the same again).
        audio / video: which kinds to produce.
        block_s: audio block length, seconds.
    """

    seed: int = 0
    width: int = 320
    height: int = 240
    rate_hz: float = 10.0
    tone_hz: float = 440.0
    beep_every_s: float = 1.0
    beep_s: float = 0.15
    amplitude: float = 0.2
    audio: bool = True
    video: bool = True
    block_s: float = 0.1

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8:
            raise ValueError(f"synthetic frame size must be at least 8x8, got {self.width}x{self.height}")
        if not self.rate_hz > 0 or not self.block_s > 0 or not self.beep_every_s > 0:
            raise ValueError("synthetic rate_hz, block_s and beep_every_s must be positive")
        if not 0 <= self.amplitude <= 0.5:
            raise ValueError(f"synthetic amplitude must be in [0, 0.5], got {self.amplitude}")
        if not (self.audio or self.video):
            raise ValueError("synthetic source needs audio or video")

    @classmethod
    def from_options(cls, options: dict[str, str]) -> SyntheticParams:
        """Build from spec options (``seed=3``, ``size=160x120``, ``rate=15``, ``tone=440``, ``audio=0`` ...).

        Raises:
            SourceError: unknown key or bad value (one line).
        """
        aliases = {"rate": "rate_hz", "tone": "tone_hz", "fps": "rate_hz"}
        known = {f.name: f.type for f in fields(cls)}
        kwargs: dict[str, object] = {}
        try:
            for key, value in options.items():
                if key == "size":
                    w, _, h = value.lower().partition("x")
                    kwargs["width"], kwargs["height"] = int(w), int(h)
                    continue
                name = aliases.get(key, key)
                if name not in known:
                    raise SourceError(f"unknown synthetic option {key!r} (use seed, size, rate, tone, "
                                      "beep_every_s, beep_s, amplitude, audio, video)")
                kind = known[name]
                if kind in ("bool", bool):
                    kwargs[name] = value.lower() in ("1", "true", "yes", "on")
                elif kind in ("int", int):
                    kwargs[name] = int(value)
                else:
                    kwargs[name] = float(value)
            return cls(**kwargs)  # type: ignore[arg-type]
        except ValueError as exc:
            raise SourceError(f"bad synthetic option: {exc}") from exc


def _palette(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    rng = np.random.default_rng(seed)
    c0, c1, c2 = (rng.integers(0, 256, 3).astype(np.float32) for _ in range(3))
    fx, fy = rng.uniform(0.07, 0.23, 2)
    px, py = rng.uniform(0, 2 * math.pi, 2)
    return c0, c1, c2, (float(fx), float(fy), float(px), float(py))


def synthetic_frame(params: SyntheticParams, index: int) -> np.ndarray:
    """Frame ``index`` of the synthetic scene.

    Returns:
        ``[height, width, 3]`` uint8 RGB; a pure function of ``(params, index)``.
    """
    h, w = params.height, params.width
    c0, c1, c2, (fx, fy, px, py) = _palette(params.seed)
    t = index / params.rate_hz
    ramp = ((np.arange(w, dtype=np.float32) / max(1, w - 1) + 0.05 * t) % 1.0)[None, :, None]
    img = np.broadcast_to(c0 * (1 - ramp) + c1 * ramp, (h, w, 3)).copy()
    side = max(4, min(h, w) // 4)
    x = int((0.5 + 0.5 * math.sin(2 * math.pi * fx * t + px)) * (w - side))
    y = int((0.5 + 0.5 * math.sin(2 * math.pi * fy * t + py)) * (h - side))
    img[y:y + side, x:x + side] = c2
    bar_x = int((t * w / 4) % w)  # a bar sweeping right, one pass every 4 s
    img[:, bar_x:bar_x + max(1, w // 40)] = 255 - c2
    strip = max(2, h // 30)  # frame counter: binary strip along the bottom
    bits = np.array([(index >> b) & 1 for b in range(16)], np.float32)
    cells = np.repeat(bits, max(1, w // 16))[:w]
    img[h - strip:, : cells.shape[0]] = (cells * 255)[None, :, None]
    return img.astype(np.uint8)


def synthetic_audio(params: SyntheticParams, start_sample: int, n: int) -> np.ndarray:
    """Generate samples ``[start_sample, start_sample + n)`` of the soundtrack at 16 kHz.

    Returns:
        ``[n]`` float32 mono in [-1, 1]; a pure function of ``(params, start_sample, n)``.
    """
    idx = np.arange(start_sample, start_sample + n, dtype=np.int64)
    t = idx / SAMPLE_RATE_HZ
    tone = params.amplitude * np.sin(2 * np.pi * params.tone_hz * t)
    beep_hz = 880.0 + 110.0 * (params.seed % 5)
    in_beep = (t % params.beep_every_s) < params.beep_s
    beep = params.amplitude * np.sin(2 * np.pi * beep_hz * t) * in_beep
    return (tone + beep).astype(np.float32)


class SyntheticSource(ThreadedSource):
    """The synthetic scene as a source, paced in real time (``realtime=True``) or as fast as possible.

    Args:
        params: scene and soundtrack parameters.
        realtime: pace items on the clock (live) or produce them as fast as the consumer takes them.
        fps: frames kept per second (sampling at the source saves rendering unused frames).
        clock / session_t0 / counters: shared session objects.
    """

    def __init__(
        self,
        params: SyntheticParams | None = None,
        *,
        realtime: bool = True,
        fps: float | None = None,
        clock: Clock | None = None,
        session_t0: float | None = None,
        counters: StreamCounters | None = None,
    ) -> None:
        self.params = params if params is not None else SyntheticParams()
        super().__init__(f"synthetic(seed={self.params.seed})", live=realtime, counters=counters, clock=clock,
                         session_t0=session_t0, maxsize=64)
        self.realtime = realtime
        self._sampler = FrameSampler(fps)

    def _open(self) -> None:
        p = self.params
        self.kinds = frozenset(k for k, on in (("audio", p.audio), ("video", p.video)) if on)

    def _run(self) -> None:
        p = self.params
        block = max(1, round(p.block_s * SAMPLE_RATE_HZ))
        i = j = 0  # next video frame / next audio block
        while not self._stop.is_set():
            t_video = i / p.rate_hz if p.video else math.inf
            t_audio = (j + 1) * block / SAMPLE_RATE_HZ if p.audio else math.inf  # released at its end
            if t_video <= t_audio:
                if self.realtime and not self._sleep_until_session(t_video):
                    return
                if self._sampler.accept(t_video):
                    item: AudioChunk | VideoFrame = VideoFrame(t_video, synthetic_frame(p, i))
                    if not self._emit(item):
                        return
                i += 1
            else:
                if self.realtime and not self._sleep_until_session(t_audio):
                    return
                if not self._emit(AudioChunk(j * block / SAMPLE_RATE_HZ, synthetic_audio(p, j * block, block))):
                    return
                j += 1
