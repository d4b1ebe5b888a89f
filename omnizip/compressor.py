"""The ``Compressor`` protocol: a layout of tokens in, a :class:`~omnizip.types.KeepPlan` out."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from omnizip.config import OmniZipConfig
from omnizip.types import KeepPlan, TokenLayout


@runtime_checkable
class Compressor(Protocol):
    """A token-compression method.

    ``plan`` must not modify its input. Offline compressors are stateless; streaming ones (the
    online budget controller) carry state from one window to the next and forget it on ``reset``.

    Attributes:
        name: the registry name of the method (``identity``, ``omnizip`` ...).
        streaming: True when ``plan`` is meant to be called once per window, in stream order.
    """

    name: str
    streaming: bool

    def plan(self, layout: TokenLayout) -> KeepPlan:
        """Decide which tokens to keep and which to merge.

        Args:
            layout: the tokens of one clip (offline) or one window (streaming).

        Returns:
            The plan; ``plan.keep`` has shape ``[layout.num_tokens]``.
        """
        ...

    def reset(self) -> None:
        """Forget any state carried between windows (start of a new stream)."""
        ...


class StatelessCompressor:
    """Base of the methods that carry no state between windows (the baselines).

    Stores the config; ``streaming`` mirrors ``config.mode`` (in streaming use each window is planned
    on its own); ``reset`` has nothing to forget. Subclasses set ``name`` and implement ``plan``.

    Args:
        config: the shared hyper-parameters (every method is compared at the same budget).
    """

    name: str = ""

    def __init__(self, config: OmniZipConfig) -> None:
        self.config = config
        self.streaming = config.mode == "streaming"

    def reset(self) -> None:
        """Nothing to forget (stateless)."""
