"""What the Qwen2.5-Omni and Qwen3-Omni thinker adapters share.

The family modules supply the model-specific pieces (special tokens and how their positions are
shared, audio/video encoding with saliency capture, the order of A/V tokens, extra LM inputs such as
Qwen3's deepstack features); this base class turns them into the :class:`~omnizip.adapters.base.OmniAdapter`
surface: prompts, ``encode_av`` and a text-model ``forward`` that projects only the last position; the
position-time rules and the KV-cache surgery of a stream come from :class:`~omnizip.adapters.stream_ops.StreamOps`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from typing import Any

import numpy as np
import torch

from omnizip.adapters.base import AVCursor, EncodedAV, ModelSpec, PromptParts
from omnizip.adapters.stream_ops import StreamOps
from omnizip.adapters.tmrope import AUDIO_KIND, VIDEO_KIND, AVTokens
from omnizip.preprocess import AudioPreprocessConfig, VisionPreprocessConfig, log_mel, log_mel_window
from omnizip.sequence import layout_from_ids

logger = logging.getLogger(__name__)

_AV_MARKER = "\x00OMNIZIP_AV\x00"
_QUESTION_MARKER = "\x00OMNIZIP_QUESTION\x00"
_AUDIO_CONTEXT_SAMPLES = 400  # left context kept for the next window's log-mel (needs n_fft / 2 = 200)


class ThinkerAdapter(StreamOps):
    """Shared implementation of the adapter surface for omni thinkers (see ``base.OmniAdapter``).

    Subclasses set ``spec`` and implement ``_special``, ``_encode_audio``, ``_encode_video``,
    ``_av_tokens`` and may override ``_lm_kwargs``.
    """

    spec: ModelSpec
    audio_cfg: AudioPreprocessConfig
    #: Whether the two opening (and the two closing) special tokens share one position id.
    shared_special_positions: bool = True
    #: dtype of position ids (Qwen2.5-Omni: int64; Qwen3-Omni: float32).
    position_dtype: torch.dtype = torch.long

    def __init__(
        self,
        thinker: Any,
        tokenizer: Any,
        *,
        model_name: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        system_prompt: str | None = None,
    ) -> None:
        self.thinker: Any = thinker.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.device = torch.device(device)
        self.dtype = dtype
        self.system_prompt = system_prompt
        self.text_config = thinker.config.get_text_config()

    def _vision_config(self, family: str, video_max_pixels: int | None) -> VisionPreprocessConfig:
        """The family's frame preprocessing, checked against the checkpoint's vision config.

        ``video_max_pixels`` fixes min = max pixels; patch, temporal patch and merge sizes must agree.
        """
        pixels = {} if video_max_pixels is None else {"min_pixels": video_max_pixels, "max_pixels": video_max_pixels}
        cfg = VisionPreprocessConfig.for_family(family, **pixels)
        vcfg = self.thinker.config.vision_config
        if (
            vcfg.patch_size != cfg.patch_size
            or vcfg.temporal_patch_size != cfg.temporal_patch_size
            or vcfg.spatial_merge_size != cfg.merge_size
        ):
            raise ValueError(
                f"vision config does not match the {family} preprocessing (patch {cfg.patch_size}, "
                f"temporal {cfg.temporal_patch_size}, merge {cfg.merge_size})"
            )
        return cfg

    def positions_1d(self, values: list[float]) -> torch.Tensor:
        """``[3, S]`` position ids of text/special tokens (the same id on the t, h and w rows)."""
        return torch.as_tensor(values, dtype=self.position_dtype).view(1, -1).expand(3, -1)

    # ------------------------------------------------------------------ special tokens / prompts
    def _special(self, name: str) -> int:
        """Token id of a special token by role: audio, video, audio_bos, audio_eos, vision_bos, vision_eos.

        Both families' thinker configs carry these ids under the same names.
        """
        cfg = self.thinker.config
        ids = {
            "audio": cfg.audio_token_id,
            "video": cfg.video_token_id,
            "audio_bos": cfg.audio_start_token_id,
            "audio_eos": cfg.audio_end_token_id,
            "vision_bos": cfg.vision_start_token_id,
            "vision_eos": cfg.vision_end_token_id,
        }
        return int(ids[name])

    def open_ids(self, has_audio: bool, has_video: bool) -> list[int]:
        """A/V opening special tokens: ``<vision_bos><audio_bos>``, or the one that applies."""
        ids = []
        if has_video:
            ids.append(self._special("vision_bos"))
        if has_audio:
            ids.append(self._special("audio_bos"))
        if not ids:
            raise ValueError("an A/V block needs audio or video")
        return ids

    def close_ids(self, has_audio: bool, has_video: bool) -> list[int]:
        """A/V closing special tokens: ``<audio_eos><vision_eos>``, or the one that applies."""
        ids = []
        if has_audio:
            ids.append(self._special("audio_eos"))
        if has_video:
            ids.append(self._special("vision_eos"))
        if not ids:
            raise ValueError("an A/V block needs audio or video")
        return ids

    def special_positions(self, n: int, start: float) -> list[float]:
        """Positions of ``n`` consecutive special tokens starting at ``start`` (shared or consecutive)."""
        return [start] * n if self.shared_special_positions else [start + i for i in range(n)]

    def prompt_parts(self, question: str, system_prompt: str | None = None) -> PromptParts:
        """Token ids of the chat prompt around the A/V block, rendered with the tokenizer's template.

        The question is user text: it is tokenized on its own with special tokens split
        (:meth:`user_text_ids`), so ``<|im_end|><|im_start|>system ...`` typed in a question stays plain
        text and cannot open a new chat turn.

        Args:
            question: the user's question ("" for the prefix of a stream).
            system_prompt: overrides the adapter's default system prompt.
        """
        system = system_prompt if system_prompt is not None else self.system_prompt
        messages = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": _AV_MARKER + _QUESTION_MARKER})
        text = None
        if getattr(self.tokenizer, "chat_template", None):
            try:
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as exc:  # a template that rejects plain-string content
                logger.warning("chat template failed (%s); using the Qwen chat format", exc)
        if not text or _AV_MARKER + _QUESTION_MARKER not in text:
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            text += "<|im_start|>assistant\n"
        prefix, rest = text.split(_AV_MARKER + _QUESTION_MARKER, 1)
        suffix = self.user_text_ids(question) + self.text_ids(rest)
        return PromptParts(prefix=self.text_ids(prefix), suffix=suffix)

    def text_ids(self, text: str) -> list[int]:
        """Token ids of trusted template text (special-token strings in it are recognised, no BOS added)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def user_text_ids(self, text: str) -> list[int]:
        """Token ids of user text: never a special or added token, whatever the text holds."""
        if not text:
            return []
        ids = list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
        added = set(getattr(self.tokenizer, "added_tokens_decoder", {}) or {})
        if added.intersection(ids):  # an added token that is not marked special: cut before every "<"
            ids = [i for piece in re.split(r"(?=<)", text) if piece
                   for i in self.tokenizer(piece, add_special_tokens=False, split_special_tokens=True)["input_ids"]]
        return ids

    def eos_token_ids(self) -> set[int]:
        """Ids that end an answer: the tokenizer's eos, ``<|im_end|>`` and ``<|endoftext|>`` when present."""
        ids = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        for tok in ("<|im_end|>", "<|endoftext|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid >= 0:
                ids.add(tid)
        return ids

    # ------------------------------------------------------------------ encoding
    def _encode_audio(
        self, audio: np.ndarray, saliency: str | None, cursor: AVCursor, stream: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, float | None]:
        """``audio [n]`` float32 16 kHz -> features ``[N_a, D]``, saliency ``[N_a]`` or None, mel max."""
        raise NotImplementedError

    def _log_mel(self, audio: np.ndarray, cursor: AVCursor, stream: bool) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """Log-mel ``[1, 128, T]`` + mask ``[1, T]``: whole clip, or one stream window with left context."""
        if not stream:
            feats, mask = log_mel(audio, self.audio_cfg)
            return feats, mask, None
        mel = log_mel_window(audio, cursor.audio_tail, running_max_log10=cursor.mel_max_log10, cfg=self.audio_cfg)
        return mel.input_features, mel.feature_attention_mask, mel.max_log10

    def _encode_video(self, frames: np.ndarray) -> tuple[torch.Tensor, tuple[int, int, int], dict[str, Any]]:
        """``frames [F, H, W, 3]`` uint8 -> (features ``[N_v, D]``, grid ``(t, h, w)``, extras)."""
        raise NotImplementedError

    def _av_tokens(
        self, n_audio: int, grid_thw: tuple[int, int, int] | None, cursor: AVCursor, interleave: bool,
        second_per_grid: float,
    ) -> AVTokens:
        raise NotImplementedError

    @torch.no_grad()
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
    ) -> EncodedAV:
        """Encode one window (or a whole clip) into the full, uncompressed token layout.

        Args:
            audio: ``[n]`` float32 mono 16 kHz, or None / empty for no audio.
            frames: ``[F, H, W, 3]`` uint8 RGB frames sampled at ``spec.fps``, or None / empty.
            cursor: where this block starts in the stream (``AVCursor(base)`` for a clip).
            saliency: ``global`` / ``block`` audio saliency variant, or None to skip it.
            interleave: ``use_audio_in_video`` layout (ignored when one modality is missing).
            stream: compute the log-mel of a stream window (left context and running floor from the
                cursor) instead of a whole clip.
            video_fps: the rate the frames were sampled at (default ``spec.fps``); a clip whose frames
                were capped is sampled more sparsely, which stretches each grid step's time.

        Returns:
            The :class:`EncodedAV`; ``layout.embeds`` is ``[N, D]`` in the model dtype.
        """
        has_audio = audio is not None and len(audio) > 0
        has_video = frames is not None and len(frames) > 0
        if not (has_audio or has_video):
            raise ValueError("encode_av needs audio or video")
        d = self.spec.hidden_size
        a_feat = torch.zeros(0, d, dtype=self.dtype, device=self.device)
        a_sal: torch.Tensor | None = None
        v_feat = torch.zeros(0, d, dtype=self.dtype, device=self.device)
        grid: tuple[int, int, int] | None = None
        v_extras: dict[str, Any] = {}
        mel_max = cursor.mel_max_log10
        timings = {"audio_encode_ms": 0.0, "video_encode_ms": 0.0}
        events: dict[str, tuple[Any, Any]] = {}
        if audio is not None and has_audio:
            audio = np.asarray(audio, dtype=np.float32)
            t0 = self._mark()
            a_feat, a_sal, mel_max = self._encode_audio(audio, saliency, cursor, stream)
            self._stage_done("audio_encode_ms", t0, timings, events)
        if frames is not None and has_video:
            t0 = self._mark()
            v_feat, grid, v_extras = self._encode_video(np.asarray(frames))
            self._stage_done("video_encode_ms", t0, timings, events)
        fps = video_fps or self.spec.fps
        toks = self._av_tokens(a_feat.shape[0], grid, cursor, interleave, self.spec.temporal_patch_size / fps)
        # The token plan is built on the host (tmrope); it moves to the model's device once, and the
        # layout lives there entirely (see omnizip.device).
        kind = toks.kind.to(self.device)
        feature_index = toks.feature_index.to(self.device)
        is_audio = kind == AUDIO_KIND
        is_video = kind == VIDEO_KIND
        embeds = torch.empty(toks.kind.shape[0], d, dtype=self.dtype, device=self.device)
        embeds[is_audio] = a_feat[feature_index[is_audio]].to(self.dtype)
        embeds[is_video] = v_feat[feature_index[is_video]].to(self.dtype)
        saliency_in_order = None
        if a_sal is not None:
            # Saliency is per audio feature; the layout lists audio tokens in feature order already.
            saliency_in_order = a_sal.to(self.device)[feature_index[is_audio]].float()
        audio_id, video_id = self._special("audio"), self._special("video")
        token_ids = torch.where(is_audio, audio_id, video_id).long()
        # Chunks and frames exactly as the reference reads a sequence (video run i pairs with audio run i).
        layout = layout_from_ids(
            embeds, token_ids, saliency_in_order, audio_token_id=audio_id, video_token_id=video_id,
            video_grid_thw=torch.tensor(grid, device="cpu") if grid is not None else None,
        )
        layout = dataclasses.replace(layout, positions=toks.positions.to(self.device))
        extras = {}
        if "deepstack" in v_extras:
            extras["deepstack"] = v_extras["deepstack"]  # per level, video tokens in feature order
            extras["video_feature_index"] = feature_index[is_video]
        n_grids = grid[0] if grid is not None else 0
        tail = audio[-_AUDIO_CONTEXT_SAMPLES:].copy() if audio is not None and has_audio else None
        next_cursor = AVCursor(
            cursor.base, cursor.audio_tokens + int(a_feat.shape[0]), cursor.grids + n_grids, tail, mel_max
        )
        return EncodedAV(
            layout=layout,
            token_ids=token_ids,
            next_cursor=next_cursor,
            close_position=toks.close_position,
            extras=extras,
            audio_s=(len(audio) / 16000.0) if audio is not None and has_audio else 0.0,
            video_frames=len(frames) if frames is not None and has_video else 0,
            timings=timings,
            timing_events=events,
        )

    def _mark(self) -> Any:
        """A stage boundary: a recorded CUDA event on a GPU (no synchronize), else ``perf_counter``."""
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _stage_done(self, name: str, start: Any, timings: dict[str, float],
                    events: dict[str, tuple[Any, Any]]) -> None:
        """Record a stage's time: milliseconds now on the CPU, an event pair (read later) on CUDA."""
        if isinstance(start, float):
            timings[name] = (time.perf_counter() - start) * 1e3
        else:
            events[name] = (start, self._mark())

    # ------------------------------------------------------------------ language model
    def embed_ids(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        """``[S, D]`` input embeddings of token ids (model dtype, on the model device)."""
        t = torch.as_tensor(ids, dtype=torch.long, device=self.device).view(-1)
        emb = self.thinker.get_input_embeddings()(t)
        return emb.to(self.dtype)

    def av_extras(
        self, encoded: EncodedAV, kept_index: torch.Tensor, *, offset: int, total: int
    ) -> dict[str, Any] | None:
        """Text-model extras for kept A/V tokens, or None when the family needs none.

        ``kept_index`` indexes ``encoded.layout``; the tokens sit at ``offset`` inside a forward chunk
        of ``total`` tokens.
        """
        return None

    def _lm_kwargs(self, embeds: torch.Tensor, extras: dict[str, Any] | None) -> dict[str, Any]:
        """Extra keyword arguments of the text model for this chunk (Qwen3: deepstack)."""
        return {}

    @torch.no_grad()
    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        *,
        extras: dict[str, Any] | None = None,
        logits: bool = True,
    ) -> torch.Tensor | None:
        """Append ``embeds [S, D]`` at ``positions [3, S]`` to ``cache``; logits ``[V]`` of the last one.

        Only the last position goes through ``lm_head`` (full-length logits cost ~0.9 GB at 7B).
        """
        lm = self.thinker.model.language_model
        pos = positions.to(self.device).reshape(3, 1, -1)
        out = lm(
            inputs_embeds=embeds.to(self.device, self.dtype).unsqueeze(0),
            position_ids=pos,
            **{_cache_kwarg(lm): cache},
            use_cache=True,
            **self._lm_kwargs(embeds, extras),
        )
        if not logits:
            return None
        last = out.last_hidden_state[:, -1]
        return self.thinker.lm_head(last).float()[0]


def _cache_kwarg(lm: Any) -> str:
    """The text model's name for the KV cache argument.

    ``cache`` where transformers renamed it (the old ``past_key_values`` warns on every window and goes
    away in 5.40), else ``past_key_values`` (older 5.x).
    """
    import inspect

    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"

