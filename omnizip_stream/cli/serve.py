"""``omnizip serve``: many live streams, one model, every stream's questions and status on MQTT."""

from __future__ import annotations

import argparse
import sys

from omnizip_stream.cli import UserError
from omnizip_stream.cli._common import add_model_arguments, positive_float, tiny_notice
from omnizip_stream.cli.serve_mqtt import add_broker_arguments, mqtt_options
from omnizip_stream.cli.stream import run_app, stop_on_sigterm

HELP = "serve many live streams with one model; each on omnizip/<id>/query and omnizip/<id>/status"
EXAMPLE = "omnizip serve --config configs/server.yaml --broker mqtt://broker.local:1883"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``omnizip serve``."""
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="server file: stream defaults (model ...), server: settings and streams: "
                             "[{id, source, <overrides>}] (see configs/server.yaml; shipped as 'server')")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="stream defaults overridden after the file, e.g. device=cuda max_new_tokens=32")
    add_model_arguments(parser)
    add_broker_arguments(parser)
    parser.add_argument("--http", metavar="HOST:PORT", default=None,
                        help="also serve the HTTP API (OpenAI-compatible chat, streams, metrics) on this address "
                             "(e.g. 127.0.0.1:8000 or :8000; the server file's http: mapping turns it on too); "
                             "an address other than loopback needs an API key (env OMNIZIP_API_KEY or "
                             "http.api_key_file)")
    parser.add_argument("--status-interval", type=positive_float, default=10.0,
                        help="seconds between status lines (a stream's line is printed when it changed)")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM (exit 0) or Ctrl-C (130); a bad file or flag exits 2 before anything loads."""
    stop_on_sigterm()
    from omnizip_stream.config import parse_overrides
    from omnizip_stream.http.settings import with_address
    from omnizip_stream.server.config import load_server_config

    try:
        overrides: dict[str, object] = dict(parse_overrides(list(args.overrides)))
        overrides.update({k: getattr(args, k) for k in ("model", "device", "dtype", "attn")
                          if getattr(args, k) is not None})
        config = load_server_config(args.config, overrides)
        http = with_address(config.http, args.http)
        if http is not None:
            http.check_bind()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not config.streams:
        raise UserError(f"{args.config}: streams: is empty; list at least one stream")
    mqtt = mqtt_options(args, config.streams[0].id)
    notice = tiny_notice(config.defaults.model)
    if notice:
        print(notice, file=sys.stderr)
    from omnizip_stream.server.serve import serve_streams
    from omnizip_stream.server.service import StreamRefusedError

    user_errors: tuple[type[BaseException], ...] = (StreamRefusedError,)
    if http is not None:
        try:
            from omnizip_stream.http.runner import HttpBindError
        except ImportError as exc:  # the [http] extra is not installed
            raise UserError(f"--http needs the http extra: pip install 'omnizip-stream[http]' ({exc.name} "
                            "is missing)") from None
        user_errors += (HttpBindError,)
    run_app(lambda: serve_streams(config, mqtt, status_interval_s=args.status_interval, http=http),
            user_errors=user_errors)
    return 0
