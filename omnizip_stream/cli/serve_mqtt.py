"""``omnizip serve-mqtt``: run the live pipeline for one stream and answer questions over MQTT."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from omnizip_stream.cli import UserError
from omnizip_stream.cli._common import add_broker_port_argument, check_broker_port, tiny_notice
from omnizip_stream.cli.stream import add_source_arguments, build_config, run_with_errors

if TYPE_CHECKING:
    from omnizip_stream.app import MqttOptions

HELP = "serve questions about a live stream on an MQTT topic (omnizip/<stream-id>/query)"
EXAMPLE = ("omnizip serve-mqtt --broker mqtt://broker.local:1883 --stream-id cam1 --source rtsp://cam1/stream "
           "--config qwen2.5-omni-7b")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``omnizip serve-mqtt``."""
    add_broker_arguments(parser, one_stream=True)
    add_source_arguments(parser)


def add_broker_arguments(parser: argparse.ArgumentParser, *, one_stream: bool = False) -> None:
    """The broker, authentication, TLS and rate flags of ``serve-mqtt`` and ``serve``.

    ``one_stream`` (``serve-mqtt``) adds ``--stream-id`` and ``--client-id``.
    """
    parser.add_argument("--broker", default=None,
                        help="mqtt://HOST:PORT or mqtts://HOST:PORT; without it an embedded broker is started")
    add_broker_port_argument(parser)
    if one_stream:
        parser.add_argument("--stream-id", default="default",
                            help="topics omnizip/<ID>/query and omnizip/<ID>/status")
    parser.add_argument("--username", default=None)
    parser.add_argument("--password", default=None,
                        help="broker password (visible in `ps`: prefer OMNIZIP_MQTT_PASSWORD or --password-file)")
    parser.add_argument("--password-file", default=None, help="file whose first line is the broker password")
    parser.add_argument("--reply-prefix", default=None,
                        help="publish replies only to topics under this prefix (e.g. devices/); default: any topic "
                             "outside omnizip/ except omnizip/<ID>/reply/...")
    parser.add_argument("--cafile", default=None, help="CA certificate for mqtts://")
    parser.add_argument("--cert", default=None, help="client certificate for mutual TLS")
    parser.add_argument("--key", default=None, help="client key for mutual TLS")
    if one_stream:
        parser.add_argument("--client-id", default=None,
                            help="pin the server's MQTT client id (default omnizip-<stream-id>-<random>); a pinned id "
                                 "keeps questions the broker queued while the server was down")
    parser.add_argument("--rate-limit", type=float, default=None, metavar="PER_S",
                        help="questions per second allowed per client (default 1; 0 = no limit); a reply route "
                             "carrying several client ids gets 4x")
    parser.add_argument("--rate-burst", type=int, default=None, metavar="N",
                        help="questions a client may send at once before the rate applies (default 5)")


def mqtt_options(args: argparse.Namespace, stream_id: str) -> MqttOptions:
    """Check the broker flags (URL, credentials, TLS files, the broker itself) before anything loads.

    Raises:
        UserError: a bad value, or a broker that cannot be used (one line).
    """
    from omnizip_stream.app import MqttOptions
    from omnizip_stream.query.mqtt_config import MqttConfig, cli_credentials
    from omnizip_stream.query.preflight import check_broker

    check_broker_port(args.broker_port, args.broker)
    served = {"client_id": getattr(args, "client_id", None), "rate_limit_per_s": args.rate_limit,
              "rate_limit_burst": args.rate_burst}
    try:  # validate the URL, credentials and TLS options, and look at the broker, before loading anything
        url = args.broker if args.broker is not None else "mqtt://127.0.0.1:1883"
        creds: dict[str, str | None] = {}
        if args.broker is not None:
            creds = cli_credentials(url, args.username, args.password, args.password_file)
        mqtt_config = MqttConfig.from_url(url, stream_id=stream_id, ca_file=args.cafile, cert_file=args.cert,
                                          key_file=args.key, reply_prefix=args.reply_prefix, **creds, **served)
        if args.broker is not None:
            check_broker(mqtt_config)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return MqttOptions(stream_id=stream_id, broker=args.broker, username=args.username,
                       password=creds.get("password"), ca_file=args.cafile, cert_file=args.cert, key_file=args.key,
                       reply_prefix=args.reply_prefix, broker_port=args.broker_port, **served)


def run(args: argparse.Namespace) -> int:
    """Serve until the source ends and Ctrl-C (a live source runs until Ctrl-C)."""
    from omnizip_stream.app import RunOptions

    config = build_config(args)
    mqtt = mqtt_options(args, args.stream_id)
    options = RunOptions(source=args.source, mic=args.mic, camera_size=args.camera_size, duration_s=args.duration,
                         realtime=not args.no_realtime, loop=args.loop, max_side=args.max_side,
                         status_interval_s=args.status_interval, mqtt=mqtt)
    notice = tiny_notice(config.model)
    if notice:
        print(notice, file=sys.stderr)
    run_with_errors(config, options)
    return 0
