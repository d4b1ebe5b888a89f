"""One memory budget for every stream of a worker: reservations, admission control, measured freeing.

Each stream reserves its cache cap (``StreamConfig.cache_max_mb``: KV plus the kept embeddings that
re-anchoring re-prefills; the rolling cache never grows past it) against the worker's
``kv_budget_mb``. A stream whose cap does not fit is refused with :class:`AdmissionError`, whose
one-line message says what fits. Removing a stream gives its reservation back, and
:func:`measure_release` checks that its cache tensors are really gone.
"""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass, field
from typing import Any

from omnizip_stream.bench.env import rss_mb

MIB = 2**20


class AdmissionError(ValueError):
    """A stream's cache cap does not fit the worker's memory budget (the message says what fits)."""


def _mib(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}"


@dataclass
class KVBudget:
    """Reservations of the streams' cache caps against one budget.

    Args:
        budget_mb: the worker's budget in MiB, or None for no budget (reservations are still tracked).
    """

    budget_mb: float | None = None
    reserved: dict[str, float] = field(default_factory=dict)  # stream id -> MiB, in add order

    def __post_init__(self) -> None:
        if self.budget_mb is not None and not self.budget_mb > 0:
            raise ValueError(f"kv_budget_mb must be > 0 MiB (or None for no budget), not {self.budget_mb}")

    @property
    def reserved_mb(self) -> float:
        """MiB reserved by all streams."""
        return sum(self.reserved.values())

    @property
    def free_mb(self) -> float | None:
        """MiB still free (None without a budget)."""
        return None if self.budget_mb is None else self.budget_mb - self.reserved_mb

    def reserve(self, stream_id: str, cap_mb: float) -> None:
        """Reserve ``cap_mb`` for ``stream_id``.

        Raises:
            AdmissionError: the cap does not fit what is free.
        """
        free = self.free_mb
        if free is not None and cap_mb > free + 1e-9:
            assert self.budget_mb is not None
            held = ", ".join(f"{sid} {_mib(mb)}" for sid, mb in self.reserved.items())
            streams = f"{len(self.reserved)} stream{'s' if len(self.reserved) != 1 else ''}"
            what_fits = (f"lower cache_max_mb to <= {_mib(free)} or remove a stream" if free > 0
                         else "remove a stream or raise kv_budget_mb")
            raise AdmissionError(
                f"stream {stream_id!r} needs {_mib(cap_mb)} MiB (cache_max_mb); {_mib(max(free, 0.0))} MiB of the "
                f"{_mib(self.budget_mb)} MiB budget are free ({streams}{': ' + held + ' MiB' if held else ''}); "
                f"{what_fits}"
            )
        self.reserved[stream_id] = float(cap_mb)

    def release(self, stream_id: str) -> float:
        """Give a stream's reservation back; returns the MiB released (0 if it held none)."""
        return self.reserved.pop(stream_id, 0.0)

    def describe(self) -> dict[str, Any]:
        """``budget_mb``, ``reserved_mb``, ``free_mb`` and each stream's reservation (MiB)."""
        return {"budget_mb": self.budget_mb, "reserved_mb": self.reserved_mb, "free_mb": self.free_mb,
                "streams": dict(self.reserved)}


def engine_tensors(engine: Any) -> list[Any]:
    """The tensors a stream's memory is made of: its KV cache and the kept embeddings it stores."""
    cache = engine.cache
    tensors = list(engine.adapter.cache_tensors(cache.cache))
    tensors += [s.embeds for s in cache.segments if s.embeds is not None]
    return tensors


def measure_release(session: Any) -> dict[str, Any]:
    """Drop ``session``'s engine (its cache and compressor state) and measure what was freed.

    Call it once the model thread runs no job of the stream. Returns ``held_bytes`` (bytes of the
    stream's cache tensors before), ``still_held_bytes`` (of those tensors still alive afterwards:
    0 unless someone else keeps a reference), ``rss_before_mb`` / ``rss_after_mb`` (process RSS) and, on CUDA,
    ``cuda_freed_bytes`` (``torch.cuda.memory_allocated`` before minus after).
    """
    import torch

    engine = session.engine
    if engine is None:
        return {"held_bytes": 0, "still_held_bytes": 0}
    device = getattr(engine.adapter, "device", None)
    cuda = isinstance(device, torch.device) and device.type == "cuda"
    tensors = engine_tensors(engine)
    held = sum(int(t.nbytes) for t in tensors)
    refs = [weakref.ref(t) for t in tensors]
    del tensors, engine
    rss_before = rss_mb()
    allocated_before = torch.cuda.memory_allocated(device) if cuda else None
    session.engine = None
    gc.collect()
    alive = [r() for r in refs]
    out: dict[str, Any] = {
        "held_bytes": held,
        "still_held_bytes": sum(int(t.nbytes) for t in alive if t is not None),
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_mb(),
    }
    del alive
    if cuda:
        out["cuda_freed_bytes"] = int(allocated_before or 0) - int(torch.cuda.memory_allocated(device))
    return out
