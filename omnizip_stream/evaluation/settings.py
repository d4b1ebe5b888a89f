"""The sweep: compression methods x retention settings, as in the paper's Table 1.

A retention setting names the paper's operating points by their nominal retained fraction of the
audio+video tokens: ``0.45`` is ``rho_audio 0.3 / rho_video 0.6`` and ``0.35`` is ``0.4 / 0.7``
(spec section 4). ``full`` is the uncompressed model (the ``identity`` method), run once whatever
the retention list; it is the reference of the normalised average.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from omnizip.config import OmniZipConfig

RETENTION_PRESETS: dict[str, tuple[float, float]] = {"0.45": (0.3, 0.6), "0.35": (0.4, 0.7)}
FULL = "full"
DEFAULT_METHODS = ("full", "omnizip", "random", "uniform", "dycoke")
LBYL_SUFFIX = "-lbyl"  # listen before you look: ``omnizip-35-lbyl`` = method omnizip-lbyl at retention 0.35
# G (audio tokens merged per anchor): 15 on the audio-centric AVUT, 3 elsewhere (the paper's scripts).
BENCHMARK_G = {"avut": 15}
DEFAULT_G = 3


@dataclass(frozen=True)
class EvalSetting:
    """One column of the sweep.

    Attributes:
        method: registry name of the compressor (``identity`` for ``full``).
        retention: ``full``, a preset (``0.45``, ``0.35``) or ``RA/RV`` for explicit ratios.
        rho_audio: audio pruning ratio (fraction removed by the salient stage).
        rho_video: video pruning ratio (fraction removed).
    """

    method: str
    retention: str
    rho_audio: float
    rho_video: float

    @property
    def label(self) -> str:
        """``full`` or ``method@retention`` (``omnizip@0.45``)."""
        return FULL if self.retention == FULL else f"{self.method}@{self.retention}"

    def omnizip_config(self, *, g: int, anchor_ratio: float, mode: str, saliency: str, seed: int) -> OmniZipConfig:
        """The compressor configuration of this setting."""
        return OmniZipConfig(rho_audio=self.rho_audio, rho_video=self.rho_video, g=g, anchor_ratio=anchor_ratio,
                             mode=mode, saliency=saliency, seed=seed)  # type: ignore[arg-type]


def parse_retention(value: str) -> tuple[str, float, float]:
    """``"0.45"`` -> ``("0.45", 0.3, 0.6)``; ``"0.25/0.8"`` -> explicit ``rho_audio/rho_video``.

    Raises:
        ValueError: anything else (one line listing the accepted forms).
    """
    text = value.strip()
    if text in RETENTION_PRESETS:
        return (text, *RETENTION_PRESETS[text])
    try:
        as_float = float(text)
    except ValueError:
        as_float = None
    if as_float is not None:
        for key, ratios in RETENTION_PRESETS.items():
            if abs(float(key) - as_float) < 1e-9:
                return (key, *ratios)
    if "/" in text:
        ra, _, rv = text.partition("/")
        try:
            rho_a, rho_v = float(ra), float(rv)
        except ValueError:
            rho_a = rho_v = -1.0
        if 0.0 <= rho_a < 1.0 and 0.0 <= rho_v < 1.0:
            return (f"{rho_a:g}/{rho_v:g}", rho_a, rho_v)
    raise ValueError(
        f"unknown retention {value!r}; use {', '.join(RETENTION_PRESETS)} (the paper's settings) "
        f"or RHO_AUDIO/RHO_VIDEO pruning ratios such as 0.3/0.6"
    )


def pinned_method(name: str) -> tuple[str, str] | None:
    """``omnizip-35-lbyl`` -> ``("omnizip-lbyl", "0.35")``; ``random-45`` -> ``("random", "0.45")``; else None.

    A bench-style name (``<method>-<45|35>[-lbyl]``) names its method and its retention at once.
    """
    base, lbyl = (name[: -len(LBYL_SUFFIX)], LBYL_SUFFIX) if name.endswith(LBYL_SUFFIX) else (name, "")
    method, _, budget = base.rpartition("-")
    label = f"0.{budget}"
    if not method or label not in RETENTION_PRESETS:
        return None
    return method + lbyl, label


def build_settings(methods: list[str], retentions: list[str], available: list[str]) -> list[EvalSetting]:
    """The sweep's settings: ``full`` once (if asked), then each retention x each compressing method.

    A method named with its retention (``omnizip-35-lbyl``, ``uniform-45``; see :func:`pinned_method`)
    runs at that retention only, whatever ``retentions`` says.

    Args:
        methods: method names; ``full`` (or ``identity``) is the uncompressed reference.
        retentions: retention settings (see :func:`parse_retention`).
        available: registered compressor names.

    Raises:
        ValueError: unknown method or retention, nothing to run, duplicates.
    """
    if not methods:
        raise ValueError("--methods is empty")
    names = []
    pinned: list[EvalSetting] = []
    for m in (m.strip() for m in methods):
        name = FULL if m in (FULL, "identity") else m
        pin = pinned_method(name) if name not in available else None
        if pin is not None and pin[0] in available:
            label, rho_a, rho_v = parse_retention(pin[1])
            if any(s.method == pin[0] and s.retention == label for s in pinned):
                raise ValueError(f"method {m!r} is listed twice")
            pinned.append(EvalSetting(pin[0], label, rho_a, rho_v))
            continue
        if name != FULL and name not in available:
            raise ValueError(f"unknown method {m!r}; choose full or one of {', '.join(a for a in available if a != 'identity')}")
        if name in names:
            raise ValueError(f"method {m!r} is listed twice")
        names.append(name)
    parsed = [parse_retention(r) for r in retentions if r.strip()]
    compressing = [n for n in names if n != FULL]
    if compressing and not parsed:
        raise ValueError("--retention is empty")
    if not names and not pinned:
        raise ValueError("--methods is empty")
    settings = [EvalSetting("identity", FULL, 0.0, 0.0)] if FULL in names else []
    seen = set()
    for label, rho_a, rho_v in parsed:
        if label in seen:
            raise ValueError(f"retention {label} is listed twice")
        seen.add(label)
        settings += [EvalSetting(n, label, rho_a, rho_v) for n in compressing]
    for setting in pinned:
        if setting in settings:
            raise ValueError(f"{setting.method} at {setting.retention} is listed twice")
        settings.append(setting)
    return settings


def default_g(benchmark: str) -> int:
    """G of the paper's scripts: 15 on AVUT, 3 elsewhere."""
    return BENCHMARK_G.get(benchmark, DEFAULT_G)


def item_seed(benchmark: str, item_id: str) -> int:
    """A stable per-item seed, so randomised baselines draw the same tokens on a resumed run."""
    return zlib.crc32(f"{benchmark}/{item_id}".encode())
