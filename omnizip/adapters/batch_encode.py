"""Encoding the windows of several streams in one call of each tower.

:func:`encode_av_many` is the entry point the stream server uses. The batched path hands all requests
to :meth:`~omnizip.adapters.encoding.AVEncoding.encode_av_batch`: one audio-tower call on the log-mels
of every request with audio (each request's log-mel from its own cursor), one vision-tower call on the
frames of every request with video (sizes may differ), then each request's own saliency, layout,
positions and next cursor. The reference (``batched=False``) encodes one request at a time with
``encode_av``; both return the same :class:`~omnizip.adapters.base.EncodedAV` per request (fp32:
within 1e-5), saliency and deepstack extras included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omnizip.adapters.base import EncodedAV
from omnizip.adapters.encoding import EncodeRequest

__all__ = ["EncodeRequest", "encode_av_many"]


def encode_av_many(adapter: Any, requests: Sequence[EncodeRequest], *, batched: bool = True) -> list[EncodedAV]:
    """Encode every request; ``result[i]`` is what ``adapter.encode_av`` returns for ``requests[i]``.

    Args:
        adapter: a loaded adapter (one without ``encode_av_batch`` is encoded one request at a time).
        requests: windows of (usually) different streams.
        batched: False forces the one-at-a-time reference.

    Returns:
        One :class:`EncodedAV` per request, in order. Batched, a request's ``timings`` are those of the
        shared tower calls it took part in.
    """
    batch = getattr(adapter, "encode_av_batch", None)
    if batch is not None:  # a batch of one is ``encode_av`` (and keeps the request's prepared video)
        return list(batch(requests)) if batched else [batch([r])[0] for r in requests]
    return [
        adapter.encode_av(r.audio, r.frames, r.cursor, saliency=r.saliency, interleave=r.interleave,
                          stream=r.stream, video_fps=r.video_fps, **({"vision_plan": r.vision_plan} if r.vision_plan else {}))
        for r in requests
    ]
