"""OmniZip: training-free, audio-guided audio-video token compression (arXiv 2511.14582).

A pure library: tensors in, a plan or tensors out. Importing it has no side effects; the model
adapters live in :mod:`omnizip.adapters` and are imported only when used.
"""

from omnizip.compressor import Compressor
from omnizip.config import OmniZipConfig
from omnizip.registry import available, make_compressor, register
from omnizip.types import KeepPlan, Modality, TokenLayout, count_kept

__all__ = [
    "Compressor",
    "KeepPlan",
    "Modality",
    "OmniZipConfig",
    "TokenLayout",
    "available",
    "count_kept",
    "make_compressor",
    "register",
]
