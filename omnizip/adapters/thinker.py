"""What the Qwen2.5-Omni and Qwen3-Omni thinker adapters share.

The family modules supply the model-specific pieces (special tokens and how their positions are
shared, audio/video encoding with saliency capture, the order of A/V tokens, extra LM inputs such as
Qwen3's deepstack features); this base class turns them into the :class:`~omnizip.adapters.base.OmniAdapter`
surface: prompts, ``encode_av`` and a text-model ``forward`` that projects only the last position; the
position-time rules and the KV-cache surgery of a stream come from :class:`~omnizip.adapters.stream_ops.StreamOps`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch

from omnizip.adapters.base import EncodedAV, ModelSpec, PromptParts
from omnizip.adapters.encoding import AVEncoding
from omnizip.adapters.stream_ops import StreamOps
from omnizip.preprocess import AudioPreprocessConfig, VisionPreprocessConfig

logger = logging.getLogger(__name__)

_AV_MARKER = "\x00OMNIZIP_AV\x00"
_QUESTION_MARKER = "\x00OMNIZIP_QUESTION\x00"


class ThinkerAdapter(AVEncoding, StreamOps):
    """Shared implementation of the adapter surface for omni thinkers (see ``base.OmniAdapter``).

    Subclasses set ``spec``, ``audio_cfg`` and ``vision_cfg``, implement ``_av_tokens``, and may
    override ``_lm_kwargs`` and the encoding hooks of :class:`~omnizip.adapters.encoding.AVEncoding`
    (``encode_av`` / ``encode_av_batch`` live there).
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

    def pack_extras(self, parts: list[tuple[int, dict[str, Any] | None]]) -> dict[str, Any] | None:
        """Extras of chunks ``(S_i, extras_i)`` packed into one forward, in order (None: the family needs none)."""
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
        out = self.forward_rows(embeds, positions, cache, extras=extras, rows=[embeds.shape[0] - 1] if logits else [])
        return out[0] if logits else None

    @torch.no_grad()
    def forward_rows(
        self, embeds: torch.Tensor, positions: torch.Tensor, cache: Any, *,
        extras: dict[str, Any] | None = None, rows: list[int],
    ) -> torch.Tensor:
        """:meth:`forward` of ``embeds [N, D]`` at ``positions [3, N]``; logits ``[len(rows), V]`` of rows ``rows``.

        Only the positions in ``rows`` reach ``lm_head``; ``forward_many`` packs several streams this way.
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
        picked = out.last_hidden_state[0, torch.as_tensor(rows, dtype=torch.long, device=self.device)]
        return self.thinker.lm_head(picked).float()


def _cache_kwarg(lm: Any) -> str:
    """The text model's name for the KV cache argument.

    ``cache`` where transformers renamed it (the old ``past_key_values`` warns on every window and goes
    away in 5.40), else ``past_key_values`` (older 5.x).
    """
    import inspect

    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"

