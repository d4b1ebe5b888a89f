"""Encoding the windows of several streams in one call of each tower.

:func:`encode_av_many` is the entry point the stream server uses. The reference (``batched=False``)
encodes one request at a time with :meth:`~omnizip.adapters.thinker.ThinkerAdapter.encode_av`; the
batched path must return the same :class:`~omnizip.adapters.base.EncodedAV` per request (fp32: within
1e-5), saliency included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from omnizip.adapters.base import AVCursor, EncodedAV


@dataclass
class EncodeRequest:
    """One stream window to encode (the arguments of ``adapter.encode_av``).

    Attributes:
        audio: ``[n]`` float32 mono 16 kHz, or None.
        frames: ``[F, H, W, 3]`` uint8 frames on the model's grid, or None.
        cursor: where the window starts in its stream.
        saliency: audio saliency variant (``block``) or None.
        stream: stream-mode log-mel (left context from the cursor).
    """

    audio: np.ndarray | None
    frames: np.ndarray | None
    cursor: AVCursor
    saliency: str | None = "block"
    stream: bool = True


def encode_av_many(adapter: Any, requests: Sequence[EncodeRequest], *, batched: bool = True) -> list[EncodedAV]:
    """Encode every request; ``result[i]`` is what ``adapter.encode_av`` returns for ``requests[i]``.

    Args:
        adapter: a loaded adapter.
        requests: windows of (usually) different streams.
        batched: False forces the one-at-a-time reference.
    """
    return [adapter.encode_av(r.audio, r.frames, r.cursor, saliency=r.saliency, stream=r.stream) for r in requests]
