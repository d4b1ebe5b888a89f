"""OmniZip: training-free, audio-guided audio-video token compression (arXiv 2511.14582).

A pure library: tensors in, a plan or tensors out. Importing it has no side effects; the model
adapters live in :mod:`omnizip.adapters` and are imported only when used.
"""

from omnizip.budget import StreamingBudgetController
from omnizip.compressor import Compressor
from omnizip.config import OmniZipConfig
from omnizip.plan import apply_plan, gather_kept
from omnizip.registry import available, make_compressor, register
from omnizip.saliency import audio_saliency, pool_saliency
from omnizip.sequence import compress_sequence, layout_from_ids
from omnizip.types import KeepPlan, Modality, TokenLayout, count_kept

__all__ = [
    "Compressor",
    "KeepPlan",
    "Modality",
    "OmniZipConfig",
    "StreamingBudgetController",
    "TokenLayout",
    "apply_plan",
    "audio_saliency",
    "available",
    "compress_sequence",
    "count_kept",
    "gather_kept",
    "layout_from_ids",
    "make_compressor",
    "pool_saliency",
    "register",
]
