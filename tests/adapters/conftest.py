"""Adapter-test helpers (the tiny-model fixtures live in tests/conftest.py)."""

from omni_helpers import make_adapter, synthetic_clip  # noqa: F401  (re-exported for the test modules)
