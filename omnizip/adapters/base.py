"""The model-adapter surface: everything the engine and the CLI need from an omni thinker.

An adapter owns the model, its tokenizer and all position bookkeeping (TMRoPE ids, ``rope_deltas``).
It never changes the model: it calls public methods (``get_audio_features``, ``get_video_features``,
``language_model(inputs_embeds=..., position_ids=..., past_key_values=...)``) and uses forward hooks
where it needs internals (the audio saliency).

Position model, shared by both families: a prompt is ``prefix text | A/V open tokens | A/V tokens |
A/V close tokens | suffix text``. The A/V open tokens (``<vision_bos><audio_bos>`` or one of them)
share one position ``p_open``; A/V tokens start at ``base = p_open + 1`` and carry their TMRoPE ids;
the close tokens share ``p_close = max(ids of the last interleave chunk) + 1``; text continues from
``p_close + 1``. Decoding continues from the largest position + 1, exactly as the uncompressed model
does, whatever was pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from omnizip.types import TokenLayout


class ModelLoadError(RuntimeError):
    """A checkpoint could not be loaded; the message says what to do (one line, user-facing)."""


@dataclass(frozen=True)
class ModelSpec:
    """Static facts about a model family/checkpoint that the pipeline plans around.

    Attributes:
        family: ``qwen2_5_omni`` or ``qwen3_omni``.
        position_id_per_seconds: temporal TMRoPE ids per second of media (25 / 13).
        seconds_per_chunk: length of one audio/video interleave chunk in seconds (2 for Qwen2.5-Omni;
            Qwen3-Omni interleaves per grid step, 1 s at 2 fps).
        exact_window_s: smallest stream window whose per-window encoding equals whole-clip encoding
            (2 s for Qwen2.5-Omni: the audio tower attends in 2-s blocks; 8 s for Qwen3-Omni).
        audio_tokens_per_s: LLM audio tokens per second (25 / 13).
        fps: video frames per second fed to the vision tower (2).
        temporal_patch_size: raw frames fused into one temporal grid step (2).
        max_positions: largest position id the text model was trained for (``max_position_embeddings``).
        hidden_size: LLM embedding width ``D``.
    """

    family: str
    position_id_per_seconds: float
    seconds_per_chunk: float
    exact_window_s: float
    audio_tokens_per_s: float
    fps: float
    temporal_patch_size: int
    max_positions: int
    hidden_size: int

    @property
    def second_per_grid(self) -> float:
        """Seconds covered by one temporal grid step (``temporal_patch_size / fps``)."""
        return self.temporal_patch_size / self.fps


@dataclass(frozen=True)
class AVCursor:
    """Where the next A/V tokens of a stream (or clip) start.

    Attributes:
        base: position id of the first A/V token of the whole stream (``p_open + 1``).
        audio_tokens: LLM audio tokens already emitted in the stream (their index continues from here).
        grids: video temporal grid steps already emitted (their time continues from here).
        audio_tail: ``[m]`` float32 last samples of the previous window (left context of its log-mel),
            or None at the start of a stream / for a whole clip.
        mel_max_log10: running maximum of the stream's log-mel (Whisper's floor), or None.
    """

    base: int
    audio_tokens: int = 0
    grids: int = 0
    audio_tail: np.ndarray | None = None
    mel_max_log10: float | None = None


@dataclass(frozen=True)
class EncodedAV:
    """One window (or one whole clip) of A/V tokens, encoded, before compression.

    Attributes:
        layout: the tokens (embeds ``[N, D]`` in the model dtype, modality, chunk/frame ids, audio
            saliency ``[N_audio]`` or None, positions ``[3, N]`` (int64 for Qwen2.5-Omni, float32
            for Qwen3-Omni, as the stock code)).
        token_ids: ``[N]`` int64 placeholder ids (audio / video token id per position).
        next_cursor: the cursor for the window that follows.
        close_position: ``p_close`` if the stream ended after this window.
        extras: family-specific per-token tensors to be pruned with the same keep-mask
            (Qwen3 deepstack: ``{"deepstack": [levels][N_video, D]}``).
        audio_s: seconds of audio encoded; video_frames: raw frames encoded.
        timings: wall-clock milliseconds per stage (``audio_encode_ms``, ``video_encode_ms``); on CUDA
            the stages are timed with events instead (see :meth:`stage_ms`).
        timing_events: on CUDA, ``(start, end)`` CUDA events per stage, not read yet (reading one waits
            for the GPU, so the engine reads them once per window, after its own last event).
    """

    layout: TokenLayout
    token_ids: torch.Tensor
    next_cursor: AVCursor
    close_position: float
    extras: dict[str, Any] = field(default_factory=dict)
    audio_s: float = 0.0
    video_frames: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    timing_events: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def stage_ms(self) -> dict[str, float]:
        """``timings`` with the CUDA event pairs read (waits for the last of them on the GPU)."""
        out = dict(self.timings)
        for name, (start, end) in self.timing_events.items():
            end.synchronize()
            out[name] = float(start.elapsed_time(end))
        return out


@dataclass(frozen=True)
class PromptParts:
    """Token ids of the text around the A/V block of a chat prompt.

    Attributes:
        prefix: ``[P]`` system turn and the start of the user turn, up to the A/V block.
        suffix: ``[S]`` question, end of the user turn and the assistant prompt.
    """

    prefix: list[int]
    suffix: list[int]


class OmniAdapter(Protocol):
    """What the engine and the CLI use. Implemented by the Qwen2.5-Omni and Qwen3-Omni adapters."""

    spec: ModelSpec
    tokenizer: Any
    position_dtype: torch.dtype
    device: torch.device
    dtype: torch.dtype
    model_name: str

    def prompt_parts(self, question: str, system_prompt: str | None = None) -> PromptParts:
        """Render the chat prompt around the A/V block (``question`` may be empty for a stream prefix)."""
        ...

    def open_ids(self, has_audio: bool, has_video: bool) -> list[int]:
        """A/V opening special tokens."""
        ...

    def close_ids(self, has_audio: bool, has_video: bool) -> list[int]:
        """A/V closing special tokens."""
        ...

    def positions_1d(self, values: list[float]) -> torch.Tensor:
        """``[3, S]`` position ids of text/special tokens (the same id on the t, h and w rows)."""
        ...

    def special_positions(self, n: int, start: float) -> list[float]:
        """Positions of ``n`` opening/closing special tokens starting at ``start``."""
        ...

    def av_extras(
        self, encoded: EncodedAV, kept_index: torch.Tensor, *, offset: int, total: int
    ) -> dict[str, Any] | None:
        """Family extras of the text model for the kept A/V tokens placed at ``offset`` in a chunk of ``total``."""
        ...

    def encode_av(
        self,
        audio: np.ndarray | None,
        frames: np.ndarray | None,
        cursor: AVCursor,
        *,
        saliency: str | None = "block",
        interleave: bool = True,
        stream: bool = False,
        video_fps: float | None = None,
        vision_plan: Any = None,
    ) -> EncodedAV:
        """Encode a window of audio ``[n]`` float32 16 kHz and frames ``[F, H, W, 3]`` uint8.

        ``vision_plan``: an :data:`omnizip.vision_budget.VisionPlanner` called between the audio and
        the vision tower (listen before you look), or None.
        """
        ...

    def embed_ids(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Text embeddings ``[S, D]`` of token ids."""
        ...

    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        *,
        extras: dict[str, Any] | None = None,
        logits: bool = True,
    ) -> torch.Tensor | None:
        """Run the text model on ``embeds [S, D]`` at ``positions [3, S]``, appending to ``cache``.

        Returns the logits ``[V]`` (float32) of the last position, or None when ``logits`` is False.
        """
        ...

    def new_cache(self) -> Any:
        """An empty KV cache for this model."""
        ...

    def rotate_keys(self, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Re-rotate cached keys ``[B, H_kv, S, Dh]`` by per-token position deltas ``[3, S]``."""
        ...

    # What a rolling stream cache asks (see omnizip.adapters.stream_ops): time rules of positions, and
    # the cache's layout, so that callers never index position rows or cache layers themselves.
    def temporal_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """``[S]`` the time coordinate of each token of ``positions [3, S]``."""
        ...

    def position_shift(self, positions: torch.Tensor, modality: torch.Tensor, delta: float | torch.Tensor) -> torch.Tensor:
        """``[3, S]`` what moving tokens (``modality [S]``) back in time by ``delta`` subtracts from ``positions``."""
        ...

    def shift_positions(self, positions: torch.Tensor, modality: torch.Tensor, delta: float | torch.Tensor) -> torch.Tensor:
        """``[3, S]`` ``positions`` moved back in time by ``delta``."""
        ...

    def kv_bytes_per_token(self) -> int:
        """Bytes one token takes in the KV cache."""
        ...

    def embed_bytes_per_token(self) -> int:
        """Bytes of one stored input embedding."""
        ...

    def cache_length(self, cache: Any) -> int:
        """Tokens stored in ``cache``."""
        ...

    def cache_bytes(self, cache: Any) -> int:
        """Bytes held by the key and value tensors of ``cache``."""
        ...

    def cache_view(self, cache: Any) -> Any:
        """A cache that starts as ``cache`` and grows on its own (``cache`` is never written)."""
        ...

    def cache_tensors(self, cache: Any) -> list[torch.Tensor]:
        """The key and value tensors of ``cache``."""
        ...

    def cache_drop(self, cache: Any, start: int, end: int) -> None:
        """Remove tokens ``[start, end)`` from ``cache``."""
        ...

    def cache_truncate(self, cache: Any, length: int) -> None:
        """Keep the first ``length`` tokens of ``cache``."""
        ...

    def cache_rerotate(self, cache: Any, start: int, delta: torch.Tensor) -> None:
        """Re-rotate the keys from token ``start`` on by per-token deltas ``[3, S - start]``."""
        ...

    def eos_token_ids(self) -> set[int]:
        """Token ids that end an answer."""
        ...
