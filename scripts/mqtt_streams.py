#!/usr/bin/env python
"""List, add and remove the streams of a running ``omnizip serve`` over MQTT (``omnizip/server/streams``).

    export OMNIZIP_ADMIN_TOKEN=...            # or --token-file FILE (the server's admin token)
    python scripts/mqtt_streams.py --broker mqtt://127.0.0.1:1883 list
    python scripts/mqtt_streams.py --broker mqtt://127.0.0.1:1883 add yard rtsp://cam2/stream rho_video=0.7 loop=true
    python scripts/mqtt_streams.py --broker mqtt://127.0.0.1:1883 remove yard

``add`` takes the stream's id, its source and ``key=value`` settings (any key of a ``streams:`` item of
the server file; values are JSON when they parse as JSON, else strings). Exit codes: 0 done; 1 the server
refused (its error code and message are printed); 2 bad arguments or broker unreachable; 3 no reply
within --timeout. The token is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from omnizip_stream.query.mqtt_client import MqttQueryClient
from omnizip_stream.query.mqtt_config import MqttConfig, cli_credentials

TOKEN_ENV = "OMNIZIP_ADMIN_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("op", choices=("list", "add", "remove"))
    p.add_argument("stream_id", nargs="?", help="the stream (add, remove)")
    p.add_argument("source", nargs="?", help="its source spec (add): camera, file:PATH, rtsp://..., synthetic")
    p.add_argument("settings", nargs="*", metavar="key=value", help="per-stream settings (add)")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--token-file", help=f"file whose first line is the admin token (default: ${TOKEN_ENV})")
    p.add_argument("--topic-prefix", default="omnizip", help="the server's topic prefix (default omnizip)")
    p.add_argument("--username")
    p.add_argument("--password-file", help="file whose first line is the broker password")
    p.add_argument("--cafile", help="CA certificate (PEM) that signed the broker's certificate (mqtts://)")
    p.add_argument("--cert", help="client certificate (PEM) for mutual TLS")
    p.add_argument("--key", help="client key (PEM) for mutual TLS")
    p.add_argument("--v311", action="store_true", help="use MQTT 3.1.1 (reply_to/id in the payload)")
    p.add_argument("--client-id", help="MQTT client id (replies on <prefix>/server/reply/<id>)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the reply (default 120)")
    p.add_argument("--json", action="store_true", help="print the reply as JSON")
    return p


def request_body(args: argparse.Namespace, token: str) -> dict[str, Any]:
    """The control request of the command line.

    Raises:
        ValueError: a missing or extra argument, or a setting that is not ``key=value``.
    """
    body: dict[str, Any] = {"op": args.op, "token": token}
    if args.op == "list":
        if args.stream_id or args.source or args.settings:
            raise ValueError("list takes no stream")
    elif args.op == "remove":
        if not args.stream_id or args.source or args.settings:
            raise ValueError("remove takes exactly one stream id")
        body["stream_id"] = args.stream_id
    else:
        if not args.stream_id or not args.source:
            raise ValueError("add needs a stream id and a source")
        stream: dict[str, Any] = {"id": args.stream_id, "source": args.source}
        for item in args.settings:
            key, sep, text = item.partition("=")
            if not sep or not key:
                raise ValueError(f"setting {item!r} is not key=value")
            try:
                stream[key] = json.loads(text)
            except ValueError:
                stream[key] = text
        body["stream"] = stream
    return body


def read_token(token_file: str | None) -> str:
    """The admin token from ``--token-file`` or the environment (ValueError when there is none)."""
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as fh:
                token = fh.readline().strip()
        except OSError as exc:
            raise ValueError(f"--token-file {token_file!r} cannot be read ({exc.strerror})") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ValueError(f"no admin token: set {TOKEN_ENV} or pass --token-file FILE")
    return token


async def run(args: argparse.Namespace) -> int:
    try:
        body = request_body(args, read_token(args.token_file))
        creds = cli_credentials(args.broker, args.username, None, args.password_file)
        config = MqttConfig.from_url(args.broker, stream_id="server", **creds, ca_file=args.cafile,
                                     cert_file=args.cert, key_file=args.key, topic_prefix=args.topic_prefix,
                                     protocol="3.1.1" if args.v311 else "5", client_id=args.client_id)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        async with MqttQueryClient(config) as client:
            reply = await client.request(body, topic=f"{args.topic_prefix}/server/streams", timeout_s=args.timeout)
    except ConnectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TimeoutError:
        print(f"error: no reply from a stream server on {config.url} within {args.timeout:g} s "
              f"(is `omnizip serve` running there, and may this account write {args.topic_prefix}/server/streams?)",
              file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(reply))
    if not reply.get("ok"):
        err = reply.get("error") or {}
        if not args.json:
            print(f"error [{err.get('code')}]: {err.get('message')}", file=sys.stderr)
        return 1
    if not args.json:
        for item in reply.get("streams", []):
            print(f"{item.get('id')}\t{item.get('state')}\t{item.get('source')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.timeout <= 0:
        print("error: --timeout must be > 0", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
