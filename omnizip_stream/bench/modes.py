"""The modes a stream benchmark compares, by name.

Streaming modes run the real engine (encode -> compress -> prefill per window into the rolling,
capped KV cache; a query prefills only the question). ``reprefill`` modes keep no KV between
queries: a ring buffer holds the last N seconds of raw windows and each query re-encodes and
re-prefills that history as one prompt (the offline path, :func:`omnizip.qa.answer_clip`), which is
what serving stacks with a frame ring buffer do.

Names: ``full`` (identity), ``<method>-45`` / ``<method>-35`` for ``omnizip``, ``random``,
``uniform``, ``dycoke`` at the paper's 45 % (rho_audio 0.3 / rho_video 0.6) and 35 % (0.4 / 0.7)
settings, ``omnizip-45-lbyl`` / ``omnizip-35-lbyl`` (the same with ``vision_budget: audio``: the
audio budget decides the grid the vision tower encodes, :mod:`omnizip.vision_budget`), ``reprefill``
(no compression) and ``reprefill+omnizip-45`` / ``reprefill+omnizip-35``.
"""

from __future__ import annotations

from dataclasses import dataclass

BUDGETS: dict[str, tuple[float, float]] = {"45": (0.3, 0.6), "35": (0.4, 0.7)}
"""Setting name (percent of A/V tokens kept, roughly) -> (rho_audio, rho_video), the fractions removed."""

STREAMING_METHODS = ("omnizip", "random", "uniform", "dycoke")
LBYL_SUFFIX = "-lbyl"
"""Mode-name suffix of listen before you look (``omnizip-35-lbyl``: compressor ``omnizip-lbyl``)."""


@dataclass(frozen=True)
class Mode:
    """One benchmarked configuration.

    Attributes:
        name: as on the command line and in the results (``omnizip-35``, ``reprefill``, ...).
        kind: ``streaming`` (rolling KV cache) or ``reprefill`` (no KV reuse).
        method: compressor registry name (``identity`` for ``full`` / ``reprefill``).
        rho_audio: audio pruning ratio (fraction removed).
        rho_video: video pruning ratio (fraction removed).
    """

    name: str
    kind: str
    method: str
    rho_audio: float = 0.0
    rho_video: float = 0.0

    @property
    def compressed(self) -> bool:
        """Whether the mode prunes tokens."""
        return self.method != "identity"

    @property
    def budget(self) -> str | None:
        """``45`` / ``35`` for the compressed modes, None for full tokens."""
        for name, rhos in BUDGETS.items():
            if self.compressed and rhos == (self.rho_audio, self.rho_video):
                return name
        return None

    @property
    def streaming_twin(self) -> str:
        """The streaming mode that sees the same tokens (``reprefill+omnizip-35`` -> ``omnizip-35``)."""
        if self.kind == "streaming":
            return self.name
        return "full" if not self.compressed else self.name.split("+", 1)[1]


def _build() -> list[Mode]:
    modes = [Mode("full", "streaming", "identity")]
    for method in STREAMING_METHODS:
        for budget, (ra, rv) in BUDGETS.items():
            modes.append(Mode(f"{method}-{budget}", "streaming", method, ra, rv))
    for budget, (ra, rv) in BUDGETS.items():
        modes.append(Mode(f"omnizip-{budget}{LBYL_SUFFIX}", "streaming", "omnizip-lbyl", ra, rv))
    modes.append(Mode("reprefill", "reprefill", "identity"))
    for budget, (ra, rv) in BUDGETS.items():
        modes.append(Mode(f"reprefill+omnizip-{budget}", "reprefill", "omnizip", ra, rv))
    return modes


ALL_MODES: tuple[Mode, ...] = tuple(_build())
MODES_BY_NAME: dict[str, Mode] = {m.name: m for m in ALL_MODES}


def parse_modes(spec: str) -> list[Mode]:
    """``"full,omnizip-35,reprefill"`` -> modes in the canonical order; ``all`` selects every mode.

    Raises:
        ValueError: an unknown or empty list (one line, with the valid names).
    """
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError("--modes is empty; give a comma-separated list or 'all'")
    if names == ["all"]:
        return list(ALL_MODES)
    unknown = [n for n in names if n not in MODES_BY_NAME]
    if unknown:
        raise ValueError(f"unknown mode(s) {', '.join(unknown)}; valid: all, {', '.join(MODES_BY_NAME)}")
    wanted = set(names)
    return [m for m in ALL_MODES if m.name in wanted]
