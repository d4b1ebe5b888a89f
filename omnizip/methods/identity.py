"""``identity``: keeps every token (the full-token reference point of every comparison)."""

from __future__ import annotations

import math

from omnizip.compressor import Compressor, StatelessCompressor
from omnizip.config import OmniZipConfig
from omnizip.methods._layout import build_plan, index_layout
from omnizip.registry import register
from omnizip.types import KeepPlan, TokenLayout


class IdentityCompressor(StatelessCompressor):
    """Keeps everything, merges nothing (stateless).

    Args:
        config: accepted for a uniform factory signature; ``streaming`` mirrors ``config.mode``.
    """

    name = "identity"

    def plan(self, layout: TokenLayout) -> KeepPlan:
        """Keep all ``N`` tokens of ``layout``."""
        index = index_layout(layout)
        return build_plan(
            layout,
            index,
            audio_keep=None,
            video_keep=None,
            chunk_video_ratio=[0.0 if n else math.nan for n in index.video_counts],
            chunk_audio_retention=[1.0 if n else math.nan for n in index.audio_counts],
        )


@register("identity")
def make_identity(config: OmniZipConfig) -> Compressor:
    """Build the identity compressor."""
    return IdentityCompressor(config)
