"""GPU tests: run with ``make test-gpu`` (``pytest -m gpu``); skipped where CUDA is missing."""

from __future__ import annotations

import sys
from pathlib import Path

# The case table and the synthetic layouts of the core tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "omnizip"))
