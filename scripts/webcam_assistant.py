#!/usr/bin/env python
"""Live webcam assistant: watch the camera, listen to the microphone, answer typed questions.

    python scripts/webcam_assistant.py --model Qwen/Qwen2.5-Omni-3B --config configs/qwen2.5-omni-3b.yaml

Type a question at the prompt, at any time: it is answered while the stream goes on, token by token,
with its latency and the windows it could see (the sink and the recent ones). ``quit`` or Ctrl-D
ends, Ctrl-C exits at once (code 130), SIGTERM stops gracefully. Without a camera (or microphone) it exits with code 2
and lists the devices that exist. ``--source`` swaps the webcam for any other source (a file, a URL,
``synthetic``) to try it on a machine without a camera.
"""

from __future__ import annotations

import argparse
import sys

from omnizip_stream.cli import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="tiny | hub id | checkpoint folder (default: the config's)")
    p.add_argument("--config", default=None, help="YAML preset, e.g. configs/qwen2.5-omni-7b.yaml")
    p.add_argument("--camera", default=None, help="camera device (/dev/video0, 0, video=Name); platform default")
    p.add_argument("--camera-size", default=None, help="capture size, e.g. 640x480")
    p.add_argument("--mic", default=None, help="microphone (index or name); default input device")
    p.add_argument("--no-mic", action="store_true", help="video only")
    p.add_argument("--source", default=None, help="use this source instead of the webcam (file:PATH, URL, synthetic)")
    p.add_argument("--status-interval", type=float, default=2.0)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    from omnizip_stream.app import RunOptions
    from omnizip_stream.cli._common import tiny_notice
    from omnizip_stream.cli.stream import run_with_errors
    from omnizip_stream.config import load_config

    args = build_parser().parse_args(argv)
    try:
        overrides = list(args.overrides) + ([f"model={args.model}"] if args.model else [])
        config = load_config(args.config, overrides)
        source = args.source
        if source is None:
            source = "camera" + (f":{args.camera}" if args.camera else "") + ("" if args.no_mic else "+mic")
        options = RunOptions(source=source, mic=args.mic, camera_size=args.camera_size, interactive=True,
                             status_interval_s=args.status_interval)
        notice = tiny_notice(config.model)
        if notice:
            print(notice, file=sys.stderr)
        print("webcam assistant: loading the model, then type questions (quit to stop)", file=sys.stderr)
        run_with_errors(config, options)
    except (UserError, ValueError) as exc:
        print(f"webcam_assistant: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    from omnizip_stream.cli.stream import exit_now

    exit_now(main())  # everything is closed: skip the interpreter's slow (and thread-pool-aborting) teardown
