"""Streaming latency benchmark; the same code as ``omnizip bench`` (see omnizip_stream/cli/bench.py).

Usage: ``python scripts/bench_stream.py --out DIR [--quick] [--model tiny|small|PATH] [--device cuda]``.
"""

from __future__ import annotations

import sys

from omnizip_stream.cli.bench import main

if __name__ == "__main__":
    sys.exit(main(prog="bench_stream.py"))
