"""``omnizip infer``: answer one question about a video (or audio) file, offline, with compression."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from omnizip_stream.cli import UserError
from omnizip_stream.cli._common import add_method_arguments, add_model_arguments, tiny_notice

HELP = "answer a question about a video or audio file (offline OmniZip)"
logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``omnizip infer``."""
    parser.add_argument("--video", required=True, metavar="FILE",
                        help="any media file PyAV decodes (video with or without audio, or audio only)")
    parser.add_argument("--question", required=True, help="the question about the clip")
    add_model_arguments(parser)
    add_method_arguments(parser)
    parser.add_argument("--saliency", choices=("global", "block"), default="global",
                        help="audio saliency: global (reference) or block (the encoder's 2-s blocks)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit")
    parser.add_argument("--max-frames", type=int, default=768,
                        help="cap on sampled frames for long videos (sampling becomes sparser)")
    parser.add_argument("--video-max-pixels", type=int, default=None,
                        help="pixel budget per frame (default 128*28*28, the paper's setting)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    """Decode, load, compress, answer; exit 0, or raise UserError (exit 2) for bad input."""
    from omnizip import OmniZipConfig, make_compressor
    from omnizip.adapters.base import ModelLoadError
    from omnizip.adapters.loading import load_adapter
    from omnizip.qa import ContextTooLongError, answer_clip
    from omnizip_stream.media import MediaError, decode_clip

    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    try:
        config = OmniZipConfig(rho_audio=args.rho_audio, rho_video=args.rho_video, g=args.g,
                               anchor_ratio=args.anchor_ratio, mode="offline", saliency=args.saliency)
        compressor = make_compressor(args.method, config)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        clip = decode_clip(args.video, fps=2.0, max_frames=args.max_frames)
    except (MediaError, ValueError) as exc:
        raise UserError(str(exc)) from None
    try:
        adapter = load_adapter(args.model, device=args.device, dtype=args.dtype, attn=args.attn,
                               video_max_pixels=args.video_max_pixels)
    except ModelLoadError as exc:
        raise UserError(str(exc)) from None
    video_fps = None
    if clip.has_video and clip.frames.shape[0] > 1 and clip.duration_s > 0:
        video_fps = min(2.0, clip.frames.shape[0] / clip.duration_s)
    audio = clip.audio if clip.has_audio and clip.audio.size else None
    frames = clip.frames if clip.has_video and clip.frames.shape[0] else None
    try:
        result = answer_clip(adapter, audio, frames, args.question, compressor, saliency=args.saliency,
                             max_new_tokens=args.max_new_tokens, video_fps=video_fps)
    except ContextTooLongError as exc:
        raise UserError(str(exc)) from None
    notice = tiny_notice(args.model)
    if args.json:
        out = result.to_dict()
        out.update({"model": args.model, "file": args.video, "duration_s": round(clip.duration_s, 3),
                    "random_weights": notice is not None})
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
        if notice:
            print(notice, file=sys.stderr)
        return 0
    if notice:
        print(notice, file=sys.stderr)
    kept = result.tokens_kept / max(1, result.tokens_total)
    print(result.answer)
    print(
        f"[{result.method}] tokens {result.tokens_kept}/{result.tokens_total} ({kept:.1%}); "
        f"audio {result.audio_tokens_kept}/{result.audio_tokens_total}, "
        f"video {result.video_tokens_kept}/{result.video_tokens_total}; "
        f"encode {result.encode_ms:.0f} ms, compress {result.compress_ms:.1f} ms, "
        f"prefill {result.prefill_ms:.0f} ms, decode {result.decode_ms:.0f} ms"
    )
    return 0
