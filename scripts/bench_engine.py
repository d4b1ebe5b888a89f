"""Stream engine benchmark (issue 4): per-window latency by stage, TTFT after 1/10/30 min, KV flatness.

Usage: ``python scripts/bench_engine.py --out engine.json [--quick] [--models tiny,small]``.
The code lives in ``omnizip_stream/bench/engine_bench.py``.
"""

from __future__ import annotations

import sys

from omnizip_stream.bench.engine_bench import main

if __name__ == "__main__":
    sys.exit(main(prog="bench_engine.py"))
