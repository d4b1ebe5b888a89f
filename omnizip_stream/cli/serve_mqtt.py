"""``omnizip serve-mqtt``: run the live pipeline for one stream and answer questions over MQTT."""

from __future__ import annotations

import argparse
import sys

from omnizip_stream.cli import UserError
from omnizip_stream.cli._common import tiny_notice
from omnizip_stream.cli.stream import add_source_arguments, build_config, run_with_errors

HELP = "serve questions about a live stream on an MQTT topic (omnizip/<stream-id>/query)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``omnizip serve-mqtt``."""
    parser.add_argument("--broker", default=None,
                        help="mqtt://HOST:PORT or mqtts://HOST:PORT; without it an embedded broker is started")
    parser.add_argument("--stream-id", default="default", help="topics omnizip/<ID>/query and omnizip/<ID>/status")
    parser.add_argument("--username", default=None)
    parser.add_argument("--password", default=None)
    parser.add_argument("--cafile", default=None, help="CA certificate for mqtts://")
    parser.add_argument("--cert", default=None, help="client certificate for mutual TLS")
    parser.add_argument("--key", default=None, help="client key for mutual TLS")
    parser.add_argument("--client-id", default=None,
                        help="pin the server's MQTT client id (default omnizip-<stream-id>-<random>); a pinned id keeps "
                             "questions the broker queued while the server was down")
    parser.add_argument("--rate-limit", type=float, default=None, metavar="PER_S",
                        help="questions per second allowed per client (default 1; 0 = no limit); a reply route "
                             "carrying several client ids gets 4x")
    parser.add_argument("--rate-burst", type=int, default=None, metavar="N",
                        help="questions a client may send at once before the rate applies (default 5)")
    add_source_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Serve until the source ends and Ctrl-C (a live source runs until Ctrl-C)."""
    from omnizip_stream.app import MqttOptions, RunOptions
    from omnizip_stream.query.mqtt_config import MqttConfig

    config = build_config(args)
    served = {"client_id": args.client_id, "rate_limit_per_s": args.rate_limit, "rate_limit_burst": args.rate_burst}
    if args.broker is not None:
        try:  # validate the URL and TLS options before loading anything
            MqttConfig.from_url(args.broker, stream_id=args.stream_id, username=args.username, password=args.password,
                                ca_file=args.cafile, cert_file=args.cert, key_file=args.key, **served)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    else:
        try:
            MqttConfig.from_url("mqtt://127.0.0.1:1883", stream_id=args.stream_id, **served)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    mqtt = MqttOptions(stream_id=args.stream_id, broker=args.broker, username=args.username, password=args.password,
                       ca_file=args.cafile, cert_file=args.cert, key_file=args.key, **served)
    options = RunOptions(source=args.source, mic=args.mic, camera_size=args.camera_size, duration_s=args.duration,
                         realtime=not args.no_realtime, loop=args.loop, max_side=args.max_side,
                         status_interval_s=args.status_interval, mqtt=mqtt)
    notice = tiny_notice(config.model)
    if notice:
        print(notice, file=sys.stderr)
    run_with_errors(config, options)
    return 0
