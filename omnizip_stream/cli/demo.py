"""``omnizip demo``: the main job on embedded defaults (synthetic source, tiny model, embedded broker)."""

from __future__ import annotations

import argparse
import sys

from omnizip_stream.cli._common import (
    add_broker_port_argument,
    add_config_arguments,
    add_model_arguments,
    check_broker_port,
    positive_float,
    resolve_config,
    tiny_notice,
)
from omnizip_stream.config import StreamConfig, stream_compression

HELP = "run the live pipeline on a synthetic scene with the tiny model and an embedded MQTT broker (~20 s)"
EXAMPLE = "omnizip demo --duration 10 --no-mqtt rho_video=0.6"

# Same values as the tiny-cpu preset (a test keeps them equal); embedded so the demo needs no file.
DEMO_CONFIG = StreamConfig(model="tiny", device="cpu", dtype="float32", method="omnizip",
                           compression=stream_compression(rho_audio=0.4, rho_video=0.7), window_s=2.0,
                           video_max_pixels=224 * 224, cache_max_tokens=8192, cache_max_mb=256.0, max_new_tokens=24)

DEMO_QUESTIONS = [
    "What is moving on the screen?",
    "What sound do you hear?",
    "Describe what happened in the last few seconds.",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``omnizip demo``."""
    parser.add_argument("--duration", type=positive_float, default=20.0, help="seconds of synthetic stream")
    parser.add_argument("--no-mqtt", action="store_true", help="do not start the embedded broker / MQTT topic")
    add_broker_port_argument(parser)
    parser.add_argument("--no-realtime", action="store_true", help="do not pace the synthetic source")
    add_model_arguments(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Stream ``--duration`` seconds of the synthetic scene, ask scripted questions locally and over MQTT."""
    from omnizip_stream.app import MqttOptions, RunOptions
    from omnizip_stream.cli.stream import run_with_errors

    base = DEMO_CONFIG
    if args.model not in (None, "tiny"):  # a real checkpoint: pick the device and dtype unless given
        base = base.replace(device="auto", dtype="auto")
    config = resolve_config(args, base=base)
    check_broker_port(args.broker_port)
    mqtt = None
    if not args.no_mqtt:
        mqtt = MqttOptions(stream_id="demo", demo_question="What did the camera see?", broker_port=args.broker_port)
    every = max(2.0, args.duration / (len(DEMO_QUESTIONS) + 1))
    options = RunOptions(source="synthetic", duration_s=args.duration, realtime=not args.no_realtime,
                         questions=list(DEMO_QUESTIONS), ask_every_s=every, interactive=False,
                         status_interval_s=2.0, mqtt=mqtt)
    notice = tiny_notice(config.model)
    print(f"omnizip demo: {args.duration:.0f} s of a synthetic moving scene with a tone and beeps, "
          f"{config.method} at rho_audio={config.compression.rho_audio} / rho_video={config.compression.rho_video}, "
          f"model {config.model}",
          file=sys.stderr)
    if notice:
        print(notice, file=sys.stderr)
    run_with_errors(config, options)
    if notice:
        print("\n" + notice.replace("note: ", "reminder: "), file=sys.stderr)
        print("next: `omnizip stream --source camera+mic --config qwen2.5-omni-3b`"
              " on a GPU machine; `omnizip serve-mqtt --broker mqtt://HOST:1883 --stream-id cam1 ...` for IoT devices.",
              file=sys.stderr)
    return 0
