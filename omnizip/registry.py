"""Name -> factory registry of compressors (used by configs, the CLI and the benchmarks).

Adding a method is one module with a ``@register("name")`` factory plus one import line in
:func:`_load_builtin`. Factories take an :class:`~omnizip.config.OmniZipConfig` so that every method
is compared at the same budget.
"""

from __future__ import annotations

from collections.abc import Callable

from omnizip.compressor import Compressor
from omnizip.config import OmniZipConfig

Factory = Callable[[OmniZipConfig], Compressor]

_REGISTRY: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory`` under ``name`` (a name can be registered once)."""

    def deco(factory: Factory) -> Factory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"compressor {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def _load_builtin() -> None:
    """Import the built-in methods so that their ``@register`` lines run (idempotent)."""
    import omnizip.methods  # noqa: F401  (registers identity, random, uniform, dycoke, omnizip)


def available() -> list[str]:
    """Sorted names of the registered compressors."""
    _load_builtin()
    return sorted(_REGISTRY)


def make_compressor(name: str, config: OmniZipConfig | None = None) -> Compressor:
    """Build the compressor registered as ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown compression method {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](config or OmniZipConfig())
