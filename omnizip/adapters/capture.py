"""Capture an audio-encoder attention layer's queries and keys with forward hooks (no model change).

OmniZip's audio saliency (Stage A) needs ``Q`` and ``K`` of the last audio-encoder layer. The stock
attention modules throw their weights away, so instead of replacing a ``forward`` we hook the
``q_proj`` / ``k_proj`` linear layers (their outputs are ``Q`` and ``K`` before the head split) and
read ``cu_seqlens`` (the 2-s / 8-s attention blocks) from the attention module's call. The model's
outputs are unchanged: hooks only read.

The audio layer is shared by every stream a model serves, so a capture records only the calls made
in its own context (its thread, or its asyncio task): its hooks check a :class:`~contextvars.ContextVar`
set on entry. Two captures open on the same layer at once (two threads encoding, or streams
interleaving) each see their own call's ``Q``/``K`` and nothing of the other's; all state lives in the
capture object of one call. One call may also pack the windows of several streams back to back
(:meth:`QKCapture.split` gives each its own rows and attention blocks).
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn

# The capture that owns the calls of the current context (thread / task); None outside any capture.
_ACTIVE: contextvars.ContextVar[QKCapture | None] = contextvars.ContextVar("omnizip_qk_capture", default=None)


class QKCapture:
    """Context manager recording ``Q``/``K`` ``[T, d_model]`` and ``cu_seqlens`` of one attention module.

    Example::

        with QKCapture(audio_tower.layers[-1].self_attn) as cap:
            audio_tower(...)
        q = cap.q.view(T, heads, head_dim)
    """

    def __init__(self, attention: Any) -> None:
        for name in ("q_proj", "k_proj"):
            if not hasattr(attention, name):
                raise TypeError(f"{type(attention).__name__} has no {name}; cannot capture audio saliency")
        self.attention = attention
        self.q: torch.Tensor | None = None
        self.k: torch.Tensor | None = None
        self.cu_seqlens: torch.Tensor | None = None
        self._handles: list[Any] = []
        self._token: contextvars.Token[QKCapture | None] | None = None

    def _mine(self) -> bool:
        """Whether the module call being hooked was made in this capture's context."""
        return _ACTIVE.get() is self

    def _on_q(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        if self._mine():
            self.q = output.detach()

    def _on_k(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        if self._mine():
            self.k = output.detach()

    def _on_call(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._mine():
            return
        cu = kwargs.get("cu_seqlens")
        if cu is None and len(args) > 1:
            cu = args[1]
        self.cu_seqlens = None if cu is None else cu.detach().to("cpu", torch.long)

    def __enter__(self) -> QKCapture:
        self._token = _ACTIVE.set(self)
        self._handles = [
            self.attention.q_proj.register_forward_hook(self._on_q),
            self.attention.k_proj.register_forward_hook(self._on_k),
            self.attention.register_forward_pre_hook(self._on_call, with_kwargs=True),
        ]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None

    def block_lengths(self) -> list[int] | None:
        """Lengths of the encoder's attention blocks, from ``cu_seqlens`` (None if not seen)."""
        if self.cu_seqlens is None:
            return None
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()

    def split(self, rows: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor, list[int] | None]]:
        """Each request's ``(q [T_i, d_model], k [T_i, d_model], block lengths)`` of a packed call.

        The requests of one call sit back to back in the layer's rows (``rows[i] = T_i``); the
        encoder's attention blocks never straddle two of them, so request ``i`` owns the next blocks
        whose lengths sum to ``T_i`` (None when ``cu_seqlens`` was not seen).

        Raises:
            RuntimeError: the hooks did not fire, the rows do not add up to what the layer saw, or a
                block straddles two requests.
        """
        if self.q is None or self.k is None:
            raise RuntimeError("audio saliency hooks did not fire")
        if sum(rows) != self.q.shape[0]:
            raise RuntimeError(f"the layer saw {self.q.shape[0]} positions, the requests hold {sum(rows)}")
        blocks = self.block_lengths()
        out: list[tuple[torch.Tensor, torch.Tensor, list[int] | None]] = []
        start = next_block = 0
        for n in rows:
            own: list[int] | None = None
            if blocks is not None:
                own, total = [], 0
                while total < n and next_block < len(blocks):
                    own.append(int(blocks[next_block]))
                    total += own[-1]
                    next_block += 1
                if total != n:
                    raise RuntimeError(f"attention blocks {blocks} do not split into requests of {list(rows)} rows")
            out.append((self.q[start:start + n], self.k[start:start + n], own))
            start += n
        return out
