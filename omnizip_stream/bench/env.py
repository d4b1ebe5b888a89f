"""What every benchmark records about where it ran, and the small measuring tools they share.

* :func:`environment` -- versions (python, torch, transformers, numpy, platform, git commit), the
  device, torch threads and the load average, in the layout of ``scripts/bench_compress.py``'s
  ``versions`` block (same keys, a few more).
* :func:`rss_mb` -- the process's resident set size now (``/proc/self/statm``).
* :class:`PeakRss` -- peak RSS growth during a block, sampled from a background thread (torch's CPU
  allocator is invisible to ``tracemalloc``); on CUDA the allocator's own peak counter is used.
* :func:`trim_memory` -- ``gc.collect()`` plus glibc ``malloc_trim(0)`` so that memory freed by the
  previous case goes back to the OS before the next case's baseline is read.
* :func:`percentiles` -- p50/p95/p99 (nearest rank) of a list of numbers.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import os
import platform
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

logger = logging.getLogger(__name__)

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def versions() -> dict[str, Any]:
    """Software and machine versions (``python``, ``torch``, ``platform``, ``cpu_count`` as bench_compress, plus more)."""
    import numpy
    import transformers

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "git_commit": _git_commit(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def load_average() -> list[float] | None:
    """1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment(device: torch.device | str) -> dict[str, Any]:
    """The ``environment`` block of a benchmark JSON: device, versions, threads, load average now."""
    dev = torch.device(device)
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "load_average_start": load_average(),
        "versions": versions(),
    }


def set_threads(threads: int) -> None:
    """Set torch's intra-op threads (>= 1).

    On a shared 2-core machine one thread is the default of the benchmarks: with two OpenMP threads
    and another busy process, the tiny model's per-window ingest was measured 8x slower (threads wait
    for a core), which says nothing about the pipeline.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def rss_mb() -> float:
    """Resident set size of this process in MiB (NaN where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE_BYTES / 2**20
    except (OSError, IndexError, ValueError):
        return math.nan


def trim_memory() -> None:
    """Collect garbage and return freed heap pages to the OS (glibc ``malloc_trim``; no-op elsewhere)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU), so wall-clock timings cover the kernels."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakRss:
    """Peak memory growth of a block: ``with PeakRss(device) as peak: ...; peak.growth_mb``.

    CPU: ``VmRSS`` is sampled every ``interval_s`` from a thread; ``growth_mb`` is the highest sample
    minus the RSS at entry (call :func:`trim_memory` first, or freed-but-kept heap hides growth).
    Spikes shorter than the interval can be missed, so it is a lower bound. CUDA:
    ``torch.cuda.max_memory_allocated`` after a reset, minus the allocated bytes at entry (exact for
    torch tensors). ``method`` names which one was used.
    """

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.001) -> None:
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.growth_mb = math.nan
        self.baseline_mb = math.nan
        self.method = "cuda.max_memory_allocated" if self.device.type == "cuda" else "sampled VmRSS (1 ms)"
        self._peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRss:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        self.baseline_mb = rss_mb()
        self._peak = self.baseline_mb
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_mb())
            time.sleep(self.interval_s)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.growth_mb = torch.cuda.max_memory_allocated(self.device) / 2**20 - self.baseline_mb
            return
        self._peak = max(self._peak, rss_mb())
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.growth_mb = max(0.0, self._peak - self.baseline_mb)


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float | None]:
    """Nearest-rank percentiles ``{"p50": ..., "p95": ..., "p99": ...}`` (None for an empty list)."""
    if not values:
        return {f"p{q}": None for q in qs}
    s = sorted(values)
    out: dict[str, float | None] = {}
    for q in qs:
        rank = max(1, math.ceil(q / 100 * len(s)))
        out[f"p{q}"] = s[rank - 1]
    return out


def median(values: list[float]) -> float | None:
    """Median (None for an empty list)."""
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
