"""RollingKVCache: a sink plus the most recent windows, under hard caps, with exact re-anchoring.

The cache wraps the model's transformers ``Cache`` and records what every stored span is: the sink
(system prompt, the A/V opening tokens and the first ``sink_windows`` windows) and one segment per
later window. Before each window is appended, whole windows are evicted oldest-first (after the
sink) until the window, plus the reserve a query needs, fits under every cap:

* ``max_tokens`` stored tokens and ``max_bytes`` of memory (KV plus the kept embeddings that
  re-anchoring re-prefills), whichever binds first;
* a position budget: temporal position ids grow 25 per second, so the span of retained windows is
  bounded such that, after re-anchoring, no position ever exceeds ``reanchor_at`` of the model's
  trained range.

Re-anchoring happens when the next window would be placed past that limit. Every retained
non-sink token's *temporal* ids move back by the same ``delta`` so that the oldest retained window
starts right after the sink (audio tokens carry time on all three rows; video tokens on the
temporal row only; height/width ids of video do not depend on time). Two policies:

* ``reprefill`` (default, exact): drop the non-sink KV and prefill the retained windows' kept
  embeddings again at their new positions. The cache then equals a one-shot prefill of the sink and
  the retained tokens at the re-anchored positions.
* ``rerotate``: rotate the cached keys by ``delta`` in place (RoPE is a rotation, so the keys equal
  keys computed at the new positions); cheaper, but the retained windows keep hidden states that
  were computed while the evicted windows were visible, as with any eviction.

Queries use ``checkpoint()`` / ``restore()``: the question and the answer are appended, then cut off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from omnizip.adapters.batch_forward import ForwardItem, forward_many
from omnizip.types import Modality

logger = logging.getLogger(__name__)


class CacheFullError(RuntimeError):
    """A single window (or the sink) does not fit under the cache caps."""


@dataclass
class Segment:
    """One stored span of the cache.

    Attributes:
        kind: ``prefix`` (system prompt and A/V opening), ``sink`` (a sink window) or ``window``.
        window_index: index of the window in the stream (-1 for the prefix).
        t0_s: stream time the segment starts at; t1_s: where it ends.
        positions: ``[3, n]`` current position ids of the stored tokens.
        modality: ``[n]`` int64 :class:`Modality` codes (decides which rows move on re-anchoring).
        embeds: ``[n, D]`` kept embeddings (for ``reprefill``), or None.
        extras: family extras of those tokens (Qwen3 deepstack), or None.
        close_position: where the A/V closing tokens go if the stream ended after this segment.
    """

    kind: str
    window_index: int
    t0_s: float
    t1_s: float
    positions: torch.Tensor
    modality: torch.Tensor
    embeds: torch.Tensor | None
    extras: dict[str, Any] | None
    close_position: float

    @property
    def length(self) -> int:
        """Stored tokens of the segment."""
        return int(self.positions.shape[1])

    @property
    def movable(self) -> bool:
        """Whether re-anchoring moves this segment (everything after the sink)."""
        return self.kind == "window"


@dataclass
class CacheEvents:
    """Counters of what the cache did (for stats and tests)."""

    windows_evicted: int = 0
    reanchors: int = 0
    evicted_indices: list[int] = field(default_factory=list)
    position_shift: float = 0.0


class RollingKVCache:
    """Sink + recent windows under token / memory / position caps (see module docstring).

    Args:
        adapter: the model adapter (``forward``, ``new_cache``, ``rotate_keys``, ``spec``).
        max_tokens: cap on stored tokens, including ``reserve_tokens``.
        max_bytes: cap on KV bytes plus stored embeddings, including the reserve.
        reserve_tokens: tokens kept free for a query (question + answer).
        reanchor: ``reprefill`` or ``rerotate``.
        reanchor_at: fraction of ``adapter.spec.max_positions`` that positions may reach.
        keep_embeddings: store kept embeddings (needed by ``reprefill``).
    """

    def __init__(
        self,
        adapter: Any,
        *,
        max_tokens: int,
        max_bytes: int,
        reserve_tokens: int,
        reanchor: str = "reprefill",
        reanchor_at: float = 0.5,
    ) -> None:
        if reanchor not in ("reprefill", "rerotate"):
            raise ValueError(f"unknown re-anchoring policy {reanchor!r}")
        self.adapter = adapter
        self.cache = adapter.new_cache()
        self.segments: list[Segment] = []
        self.reserve_tokens = reserve_tokens
        self.reanchor_policy = reanchor
        self.position_limit = float(reanchor_at * adapter.spec.max_positions)
        self.events = CacheEvents()
        tc = adapter.text_config
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        elem = torch.finfo(adapter.dtype).bits // 8
        self.kv_bytes_per_token = 2 * tc.num_hidden_layers * tc.num_key_value_heads * head_dim * elem
        self.store_bytes_per_token = tc.hidden_size * elem if reanchor == "reprefill" else 0
        per_token = self.kv_bytes_per_token + self.store_bytes_per_token
        self.max_tokens = min(int(max_tokens), int(max_bytes // per_token))
        if self.max_tokens <= reserve_tokens:
            raise CacheFullError(
                f"the cache caps allow {self.max_tokens} tokens, not more than the {reserve_tokens} reserved "
                "for a query; raise cache_max_tokens / cache_max_mb or lower max_question_tokens / max_new_tokens"
            )

    # ------------------------------------------------------------------ sizes
    @property
    def stored_tokens(self) -> int:
        """Tokens in the stream cache (queries are always restored away)."""
        return sum(s.length for s in self.segments)

    def kv_bytes(self) -> int:
        """Bytes held by the KV tensors."""
        return sum(int(layer.keys.nbytes + layer.values.nbytes) for layer in self._layers())

    def store_bytes(self) -> int:
        """Bytes of kept embeddings stored for re-prefilling."""
        return sum(int(s.embeds.nbytes) for s in self.segments if s.embeds is not None)

    def max_position(self) -> float:
        """Largest position id stored."""
        return max((float(s.positions.max()) for s in self.segments if s.length), default=0.0)

    def close_position(self) -> float:
        """Where the A/V closing tokens of a query go (after the last stored segment)."""
        return self.segments[-1].close_position if self.segments else 0.0

    def windows(self) -> list[Segment]:
        """Stored segments that are windows (sink windows included), oldest first."""
        return [s for s in self.segments if s.kind != "prefix"]

    def sink_windows(self) -> list[Segment]:
        """Stored sink windows (never evicted), oldest first."""
        return [s for s in self.segments if s.kind == "sink"]

    def recent_windows(self) -> list[Segment]:
        """Stored windows after the sink, oldest first: one contiguous run, as eviction is oldest-first."""
        return [s for s in self.segments if s.kind == "window"]

    def _layers(self) -> list[Any]:
        return [layer for layer in getattr(self.cache, "layers", []) if getattr(layer, "keys", None) is not None
                and isinstance(layer.keys, torch.Tensor) and layer.keys.numel()]

    # ------------------------------------------------------------------ append / evict
    def append(self, segment: Segment, *, logits: bool = False) -> torch.Tensor | None:
        """Prefill ``segment`` (its ``embeds`` at its ``positions``) and record it.

        The one-segment case of :meth:`prepared_append` -> a forward -> :meth:`commit`.
        """
        out = forward_many(self.adapter, [self.prepared_append(segment, logits=logits)])[0]
        self.commit(segment)
        return out

    def prepared_append(self, segment: Segment, *, logits: bool = False) -> ForwardItem:
        """The forward that prefills ``segment`` into this cache (run it, alone or batched, then :meth:`commit`).

        Evict and place first: the item appends at the cache's current end.
        """
        if segment.embeds is None:
            raise ValueError("a segment needs its embeddings to be prefilled")
        return ForwardItem(segment.embeds, segment.positions, self.cache, extras=segment.extras, logits=logits)

    def commit(self, segment: Segment) -> None:
        """Record ``segment`` once its :meth:`prepared_append` forward has run."""
        if segment.kind == "prefix" or self.reanchor_policy != "reprefill":
            segment.embeds = None  # the prefix is never re-prefilled; rerotate never needs embeddings
            segment.extras = None
        self.segments.append(segment)

    def fits(self, n_tokens: int, span: float) -> bool:
        """Whether ``n_tokens`` more tokens reaching ``span`` more positions fit now."""
        return self.stored_tokens + n_tokens + self.reserve_tokens <= self.max_tokens and (
            self._anchored_end() + span + self.reserve_tokens <= self.position_limit
        )

    def _sink_end(self) -> float:
        sink = [s for s in self.segments if not s.movable]
        return max((float(s.positions.max()) for s in sink if s.length), default=-1.0)

    def _anchored_end(self) -> float:
        """Where the last retained window would end if positions were re-anchored now."""
        movable = [s for s in self.segments if s.movable]
        if not movable:
            return self._sink_end() + 1
        first = min(float(s.positions[0].min()) for s in movable)
        return self._sink_end() + 1 + (self.max_position() - first)

    def evict_for(self, n_tokens: int, span: float) -> list[int]:
        """Evict oldest non-sink windows until ``n_tokens`` tokens spanning ``span`` positions fit.

        Returns:
            Stream indices of the evicted windows.

        Raises:
            CacheFullError: the window does not fit even with every non-sink window evicted.
        """
        evicted: list[int] = []
        while not self.fits(n_tokens, span):
            victim = next((i for i, s in enumerate(self.segments) if s.movable), None)
            if victim is None:
                raise CacheFullError(
                    f"a window of {n_tokens} tokens does not fit the cache ({self.max_tokens} tokens, "
                    f"{self.stored_tokens} in the sink, {self.reserve_tokens} reserved for queries)"
                )
            evicted.append(self._drop(victim))
        return evicted

    def _drop(self, index: int) -> int:
        start = sum(s.length for s in self.segments[:index])
        seg = self.segments.pop(index)
        end = start + seg.length
        for layer in self._layers():
            layer.keys = torch.cat([layer.keys[..., :start, :], layer.keys[..., end:, :]], dim=-2)
            layer.values = torch.cat([layer.values[..., :start, :], layer.values[..., end:, :]], dim=-2)
        self.events.windows_evicted += 1
        self.events.evicted_indices.append(seg.window_index)
        logger.debug("evicted window %d (%d tokens)", seg.window_index, seg.length)
        return seg.window_index

    # ------------------------------------------------------------------ positions
    def placement_shift(self, window_start: float, window_span: float) -> float:
        """Shift to subtract from a new window's logical positions, re-anchoring first if needed.

        Args:
            window_start: the window's first temporal position before any shift (logical).
            window_span: how far its positions reach past ``window_start``.

        Returns:
            The total shift now in force (subtract it from the window's logical positions).
        """
        shift = self.events.position_shift
        if window_start - shift + window_span + self.reserve_tokens <= self.position_limit:
            return shift
        movable = [s for s in self.segments if s.movable]
        target = self._sink_end() + 1
        first = min((float(s.positions[0].min()) for s in movable), default=window_start - shift)
        delta = first - target
        if delta > 0:
            self._reanchor(delta)
        shift = self.events.position_shift
        if window_start - shift + window_span + self.reserve_tokens > self.position_limit:
            # Nothing retained reaches back far enough: place the window right after the sink.
            self.events.position_shift = window_start - target
            shift = self.events.position_shift
        return shift

    def _reanchor(self, delta: float) -> None:
        """Move every non-sink token's temporal ids back by ``delta`` (exactly, see module docstring)."""
        self.events.reanchors += 1
        self.events.position_shift += delta
        sink_len = sum(s.length for s in self.segments if not s.movable)
        movable = [s for s in self.segments if s.movable]
        deltas = []
        for seg in movable:
            d = torch.zeros_like(seg.positions)
            d[0] = delta
            audio = seg.modality == int(Modality.AUDIO)
            d[1:, audio] = delta
            seg.positions = seg.positions - d
            seg.close_position -= delta
            deltas.append(d)
        logger.info("re-anchoring positions by %.0f (%s, %d windows)", delta, self.reanchor_policy, len(movable))
        if not movable:
            return
        if self.reanchor_policy == "rerotate":
            all_delta = -torch.cat(deltas, dim=1)
            for layer in self._layers():
                moved = self.adapter.rotate_keys(layer.keys[..., sink_len:, :], all_delta)
                layer.keys = torch.cat([layer.keys[..., :sink_len, :], moved], dim=-2)
            return
        self._truncate(sink_len)
        for seg in movable:
            self.adapter.forward(seg.embeds, seg.positions, self.cache, extras=seg.extras, logits=False)

    # ------------------------------------------------------------------ queries
    def checkpoint(self) -> int:
        """The stored length; pass it to :meth:`restore` after a query."""
        return self.stored_tokens

    def restore(self, length: int) -> None:
        """Cut everything after ``length`` tokens (the question and answer of a query)."""
        self._truncate(length)

    def _truncate(self, length: int) -> None:
        for layer in self._layers():
            if layer.keys.shape[-2] > length:
                layer.keys = layer.keys[..., :length, :].contiguous()
                layer.values = layer.values[..., :length, :].contiguous()
