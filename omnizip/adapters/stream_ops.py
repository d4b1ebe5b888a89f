"""What a rolling stream cache asks the model: how positions move in time, and how its KV cache is cut.

A streaming pipeline evicts old windows, cuts a query off again and re-anchors positions when they
grow past the trained range. All of that depends on two model facts that live here, behind the
adapter, so that ``omnizip_stream`` asks and never knows:

* **TMRoPE time rows.** Position ids are ``[3, S]`` (temporal, height, width). Moving a span back in
  time by ``delta`` moves the temporal row of every token, and the height/width rows of audio tokens
  too (audio carries time on all three rows); the height/width ids of video do not depend on time.
* **The cache layout.** transformers' ``DynamicCache`` holds per layer ``keys`` / ``values`` of
  ``[B, H_kv, S, Dh]``; dropping a range, truncating, re-rotating keys and counting bytes slice
  those tensors along ``S``.

:class:`StreamOps` is a mixin of :class:`~omnizip.adapters.thinker.ThinkerAdapter` (both Qwen families
share these rules); a family with other rules overrides the methods.
"""

from __future__ import annotations

from typing import Any

import torch

from omnizip.types import Modality


class StreamOps:
    """Position-time rules and KV-cache surgery of an omni thinker (see the module docstring).

    Needs ``thinker`` (the HF thinker), ``text_config``, ``spec`` and ``dtype`` from the adapter.
    """

    thinker: Any
    text_config: Any
    dtype: torch.dtype

    # ------------------------------------------------------------------ positions in time
    def temporal_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """``[S]`` the time coordinate of each token of ``positions [3, S]`` (the temporal row)."""
        return positions[0]

    def position_shift(self, positions: torch.Tensor, modality: torch.Tensor, delta: float | torch.Tensor) -> torch.Tensor:
        """``[3, S]`` what moving tokens back in time by ``delta`` subtracts from ``positions [3, S]``.

        Args:
            positions: ``[3, S]`` position ids (only its shape and dtype are used).
            modality: ``[S]`` int64 :class:`~omnizip.types.Modality` codes of the tokens.
            delta: temporal ids to move back (a number, or a 0-d tensor); cast to the positions' dtype
                as an assignment does (int64 ids truncate).

        Returns:
            ``[3, S]`` in the positions' dtype: ``delta`` on the temporal row of every token and on all
            three rows of audio tokens, 0 elsewhere.
        """
        d = torch.zeros_like(positions)
        d[0] = delta
        audio = modality.to(positions.device) == int(Modality.AUDIO)
        d[1:, audio] = delta
        return d

    def shift_positions(self, positions: torch.Tensor, modality: torch.Tensor, delta: float | torch.Tensor) -> torch.Tensor:
        """``[3, S]`` ``positions`` moved back in time by ``delta`` (a new tensor; see :meth:`position_shift`)."""
        return positions - self.position_shift(positions, modality, delta)

    # ------------------------------------------------------------------ KV cache
    def new_cache(self) -> Any:
        """An empty ``DynamicCache`` for the text model."""
        from transformers import DynamicCache

        return DynamicCache(config=self.text_config)

    def kv_bytes_per_token(self) -> int:
        """Bytes one token takes in the KV cache: 2 (K, V) x layers x KV heads x head dim x element size."""
        tc = self.text_config
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        return 2 * tc.num_hidden_layers * tc.num_key_value_heads * head_dim * (torch.finfo(self.dtype).bits // 8)

    def embed_bytes_per_token(self) -> int:
        """Bytes of one stored input embedding (``hidden_size`` x element size)."""
        return int(self.text_config.hidden_size) * (torch.finfo(self.dtype).bits // 8)

    @staticmethod
    def _cache_layers(cache: Any) -> list[Any]:
        """Layers of ``cache`` that hold tensors (an untouched layer has none)."""
        return [layer for layer in getattr(cache, "layers", []) if getattr(layer, "keys", None) is not None
                and isinstance(layer.keys, torch.Tensor) and layer.keys.numel()]

    def cache_length(self, cache: Any) -> int:
        """Tokens stored in ``cache`` (0 when empty)."""
        layers = self._cache_layers(cache)
        return int(layers[0].keys.shape[-2]) if layers else 0

    def cache_bytes(self, cache: Any) -> int:
        """Bytes held by the key and value tensors of ``cache``."""
        return sum(int(layer.keys.nbytes + layer.values.nbytes) for layer in self._cache_layers(cache))

    def cache_tensors(self, cache: Any) -> list[torch.Tensor]:
        """The key and value tensors ``[B, H_kv, S, Dh]`` of ``cache`` (to measure or track its memory)."""
        return [t for layer in self._cache_layers(cache) for t in (layer.keys, layer.values)]

    def cache_view(self, cache: Any) -> Any:
        """A cache that starts as ``cache`` and grows on its own: layers copied shallowly, tensors shared.

        Appending to the view rebinds the view's layer tensors (``torch.cat``), so ``cache`` is never written:
        a question evaluated on a view leaves the stream's cache bit-identical, with no copy of its tensors.
        """
        import copy

        view = copy.copy(cache)
        view.layers = [copy.copy(layer) for layer in cache.layers]
        return view

    def cache_drop(self, cache: Any, start: int, end: int) -> None:
        """Remove tokens ``[start, end)`` from every layer of ``cache`` (in place)."""
        for layer in self._cache_layers(cache):
            layer.keys = torch.cat([layer.keys[..., :start, :], layer.keys[..., end:, :]], dim=-2)
            layer.values = torch.cat([layer.values[..., :start, :], layer.values[..., end:, :]], dim=-2)

    def cache_truncate(self, cache: Any, length: int) -> None:
        """Keep the first ``length`` tokens of ``cache`` (in place; the tensors are compacted)."""
        for layer in self._cache_layers(cache):
            if layer.keys.shape[-2] > length:
                layer.keys = layer.keys[..., :length, :].contiguous()
                layer.values = layer.values[..., :length, :].contiguous()

    def cache_rerotate(self, cache: Any, start: int, delta: torch.Tensor) -> None:
        """Re-rotate the keys from token ``start`` on by per-token deltas ``[3, S - start]`` (new minus old ids)."""
        for layer in self._cache_layers(cache):
            moved = self.rotate_keys(layer.keys[..., start:, :], delta)
            layer.keys = torch.cat([layer.keys[..., :start, :], moved], dim=-2)

    @torch.no_grad()
    def rotate_keys(self, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Re-rotate cached keys by position deltas: exact because RoPE is a rotation.

        Args:
            keys: ``[B, H_kv, S, Dh]`` cached keys (already rotated to their old positions).
            delta: ``[3, S]`` new minus old position ids per token (t, h, w rows).

        Returns:
            ``[B, H_kv, S, Dh]`` keys rotated to the new positions (same dtype).
        """
        rotary = self.thinker.model.language_model.rotary_emb
        if getattr(rotary, "attention_scaling", 1.0) != 1.0:
            raise ValueError("key re-rotation needs a RoPE without attention scaling")
        pos = delta.to(keys.device).reshape(3, 1, -1)
        cos, sin = rotary(keys.float(), pos)  # [1, S, Dh] each
        cos = cos.float().unsqueeze(1)
        sin = sin.float().unsqueeze(1)
        k = keys.float()
        half = k.shape[-1] // 2
        rotated_half = torch.cat((-k[..., half:], k[..., :half]), dim=-1)
        return (k * cos + rotated_half * sin).to(keys.dtype)
