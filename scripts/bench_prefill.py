"""Offline prefill benchmark (issue 3): prefill time and peak memory, full tokens vs OmniZip and baselines.

Usage: ``python scripts/bench_prefill.py --out prefill.json [--quick] [--models tiny,small]``.
The code lives in ``omnizip_stream/bench/prefill.py``.
"""

from __future__ import annotations

import sys

from omnizip_stream.bench.prefill import main

if __name__ == "__main__":
    sys.exit(main(prog="bench_prefill.py"))
