"""``omnizip infer``: answer one question about a video (or audio) file, offline, with compression."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import stat
import sys

from omnizip_stream.cli import UserError
from omnizip_stream.cli._common import (
    add_config_arguments,
    add_method_arguments,
    add_model_arguments,
    int_range,
    resolve_config,
    tiny_notice,
)

HELP = "answer a question about a video or audio file (offline OmniZip)"
EXAMPLE = ('omnizip infer --model Qwen/Qwen2.5-Omni-7B --device cuda --video clip.mp4 '
           '--question "What is the man saying?" --rho-audio 0.4 --rho-video 0.7 --json')
logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``omnizip infer``."""
    parser.add_argument("--video", required=True, metavar="FILE",
                        help="any media file PyAV decodes (video with or without audio, or audio only)")
    parser.add_argument("--question", required=True, help="the question about the clip")
    add_model_arguments(parser)
    add_method_arguments(parser)
    add_config_arguments(parser)
    parser.add_argument("--saliency", choices=("global", "block"), default=None,
                        help="audio saliency: global (reference; default) or block (the encoder's 2-s blocks)")
    parser.add_argument("--max-new-tokens", type=int_range(1, 8192), default=None,
                        help="answer length limit (default: the config's, 64)")
    parser.add_argument("--max-frames", type=int_range(2, 100_000), default=768,
                        help="cap on sampled frames for long videos (sampling becomes sparser)")
    parser.add_argument("--video-max-pixels", type=int, default=None,
                        help="pixel budget per frame (default 128*28*28, the paper's setting)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _retention(kept: int, total: int) -> float | None:
    return round(kept / total, 4) if total else None


def probe_duration_s(path: str) -> float | None:
    """The container's duration in seconds (None when unknown or not a regular file); MediaError for bad files."""
    from omnizip_stream.sources._avopen import open_file

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None  # a FIFO or device: decoding handles it (and its timeouts)
    except OSError:
        pass  # open_file says what is wrong
    container = open_file(path)
    try:
        if container.duration:
            return float(container.duration) / 1e6
        spans = [float(st.duration * st.time_base) for st in container.streams if st.duration and st.time_base]
        return max(spans) if spans else None
    finally:
        container.close()


def run(args: argparse.Namespace) -> int:
    """Decode, load, compress, answer; exit 0, or raise UserError (exit 2) for bad input."""
    from omnizip import make_compressor
    from omnizip.adapters.base import ModelLoadError
    from omnizip.adapters.loading import load_adapter
    from omnizip.qa import ContextTooLongError, EmptyClipError, answer_clip, check_clip
    from omnizip_stream.config import StreamConfig
    from omnizip_stream.media import MediaError, decode_clip

    question = args.question.strip()
    if not question:
        raise UserError("--question is empty")
    # offline default: the reference's global saliency (a stream can only use block)
    cfg = resolve_config(args, base=StreamConfig().replace(saliency="global"))
    comp = cfg.compression
    if comp.vision_budget != "off":
        raise UserError(f"vision_budget={comp.vision_budget} works on live streams only (omnizip stream / serve); "
                        "infer answers about a whole clip offline: drop it here")
    logger.info("model %s (device %s, dtype %s); %s rho_audio=%s rho_video=%s g=%s saliency=%s", cfg.model,
                cfg.device, cfg.dtype, cfg.method, comp.rho_audio, comp.rho_video, comp.g, comp.saliency)
    try:
        compressor = make_compressor(cfg.method, dataclasses.replace(comp, mode="offline"))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        duration_s = probe_duration_s(args.video)  # a missing or non-media file fails here, before the model
    except MediaError as exc:
        raise UserError(str(exc)) from None
    try:
        adapter = load_adapter(cfg.model, device=cfg.device, dtype=cfg.dtype, attn=cfg.attn,
                               video_max_pixels=cfg.video_max_pixels, system_prompt=cfg.system_prompt,
                               seed=cfg.seed)
    except ModelLoadError as exc:
        raise UserError(str(exc)) from None
    if duration_s:  # a clip too long (or too short) is refused before minutes of decoding and encoding
        n_frames = max(1, min(args.max_frames, int(duration_s * 2.0)))
        parts = adapter.prompt_parts(question, cfg.system_prompt)
        try:
            check_clip(adapter, int(duration_s * 16000), n_frames, video_fps=min(2.0, n_frames / duration_s),
                       text_tokens=len(parts.prefix) + len(parts.suffix) + 4, max_new_tokens=cfg.max_new_tokens)
        except (ContextTooLongError, EmptyClipError) as exc:
            raise UserError(f"{args.video}: {exc}") from None
    try:
        clip = decode_clip(args.video, fps=2.0, max_frames=args.max_frames)
    except (MediaError, ValueError) as exc:
        raise UserError(str(exc)) from None
    video_fps = None
    if clip.has_video and clip.frames.shape[0] > 1 and clip.duration_s > 0:
        video_fps = min(2.0, clip.frames.shape[0] / clip.duration_s)
    audio = clip.audio if clip.has_audio and clip.audio.size else None
    frames = clip.frames if clip.has_video and clip.frames.shape[0] else None
    try:
        result = answer_clip(adapter, audio, frames, question, compressor, saliency=comp.saliency,
                             max_new_tokens=cfg.max_new_tokens, video_fps=video_fps)
    except (ContextTooLongError, EmptyClipError) as exc:
        raise UserError(f"{args.video}: {exc}") from None
    notice = tiny_notice(cfg.model)
    audio_ret = _retention(result.audio_tokens_kept, result.audio_tokens_total)
    video_ret = _retention(result.video_tokens_kept, result.video_tokens_total)
    av_total = result.audio_tokens_total + result.video_tokens_total
    av_ret = _retention(result.audio_tokens_kept + result.video_tokens_kept, av_total)
    if args.json:
        out = result.to_dict()
        out.update({
            "model": cfg.model, "file": args.video, "duration_s": round(clip.duration_s, 3),
            "random_weights": notice is not None,
            "retention": {"audio_video": av_ret, "audio": audio_ret, "video": video_ret},
            "settings": {"method": cfg.method, "rho_audio": comp.rho_audio, "rho_video": comp.rho_video, "g": comp.g,
                         "anchor_ratio": comp.anchor_ratio, "saliency": comp.saliency,
                         "video_fps": round(video_fps or 2.0, 4), "frames": int(clip.frames.shape[0])},
        })
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
        if notice:
            print(notice, file=sys.stderr)
        return 0
    if notice:
        print(notice, file=sys.stderr)

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1%}"

    print(result.answer)
    print(
        f"[{result.method}] A/V tokens kept {result.audio_tokens_kept + result.video_tokens_kept}/{av_total} "
        f"({pct(av_ret)}): audio {result.audio_tokens_kept}/{result.audio_tokens_total} ({pct(audio_ret)}), "
        f"video {result.video_tokens_kept}/{result.video_tokens_total} ({pct(video_ret)}); "
        f"prompt {result.tokens_kept}/{result.tokens_total} tokens with the text; "
        f"encode {result.encode_ms:.0f} ms, compress {result.compress_ms:.1f} ms, "
        f"prefill {result.prefill_ms:.0f} ms, decode {result.decode_ms:.0f} ms"
    )
    return 0
