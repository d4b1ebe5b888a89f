#!/usr/bin/env python
"""Ask a live OmniZip stream a question over MQTT and print the answer (an IoT device in miniature).

    python scripts/mqtt_query.py --broker mqtt://127.0.0.1:1883 --stream-id cam1 "What is on the table?"

Exit codes: 0 answered; 1 the service replied with an error; 2 bad arguments or broker unreachable;
3 no reply within --timeout. The broker password is read from --password-file, --password, the URL or
the OMNIZIP_MQTT_PASSWORD environment variable (the flag and the URL are visible in `ps`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from omnizip_stream.query.base import QueryError
from omnizip_stream.query.mqtt_client import MqttQueryClient
from omnizip_stream.query.mqtt_config import MqttConfig, cli_credentials
from omnizip_stream.query.preflight import check_broker


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("question", help="the question to ask")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--stream-id", required=True, help="stream to ask (topic omnizip/<ID>/query)")
    p.add_argument("--username")
    p.add_argument("--password", help="visible in `ps`: prefer OMNIZIP_MQTT_PASSWORD or --password-file")
    p.add_argument("--password-file", help="file whose first line is the broker password")
    p.add_argument("--cafile", help="CA certificate (PEM) that signed the broker's certificate (mqtts://)")
    p.add_argument("--cert", help="client certificate (PEM) for mutual TLS")
    p.add_argument("--key", help="client key (PEM) for mutual TLS")
    p.add_argument("--insecure", action="store_true", help="do not check the broker certificate's host name")
    p.add_argument("--v311", action="store_true", help="use MQTT 3.1.1 (reply_to/id in the payload)")
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--client-id", help="MQTT client id (also the rate-limit identity)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer (default 60)")
    p.add_argument("--json", action="store_true", help="print the final reply as JSON instead of the text")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log the MQTT exchange (-vv: debug)")
    return p


async def ask(args: argparse.Namespace) -> int:
    try:
        creds = cli_credentials(args.broker, args.username, args.password, args.password_file)
        config = MqttConfig.from_url(
            args.broker, stream_id=args.stream_id, **creds, ca_file=args.cafile, cert_file=args.cert, key_file=args.key, tls_insecure=args.insecure or None,
            protocol="3.1.1" if args.v311 else "5", client_id=args.client_id,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    streamed: list[str] = []

    def on_partial(delta: str) -> None:
        streamed.append(delta)
        if not args.json:
            sys.stdout.write(delta)
            sys.stdout.flush()

    try:
        async with MqttQueryClient(config) as client:
            reply = await client.ask(
                args.question, max_new_tokens=args.max_new_tokens, stream=args.stream,
                timeout_s=args.timeout, on_partial=on_partial if args.stream else None,
            )
    except ConnectionError as exc:
        message = str(exc)
        try:  # a port that speaks the other protocol (TLS vs plain) looks like a flaky network: say which
            await asyncio.to_thread(check_broker, config, 2.0)
        except ValueError as why:
            message = str(why)
        print(f"error: {message}", file=sys.stderr)
        return 2
    except QueryError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 1
    except TimeoutError as exc:
        if streamed and not args.json:
            print()
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(reply))
        return 0
    text = reply.get("answer", "")
    if streamed and "".join(streamed) == text:
        print()
    else:
        if streamed:  # a partial went missing: show the authoritative final text
            print()
        print(text)
    info = [f"ttft {reply.get('ttft_ms')} ms", f"total {reply.get('total_ms')} ms"]
    if reply.get("window_range") is not None:
        info.append(f"windows {reply['window_range'][0]}-{reply['window_range'][1]}")
    if reply.get("time_range_s") is not None:
        t0, t1 = reply["time_range_s"]
        info.append(f"stream time {t0:.1f}-{t1:.1f} s")
    print(f"({', '.join(info)})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # failures are reported below in one line; paho's socket errors would repeat them
        logging.getLogger("mqtt").disabled = True  # (aiomqtt resets its level on import)
    if args.timeout <= 0:
        print("error: --timeout must be > 0", file=sys.stderr)
        return 2
    try:
        return asyncio.run(ask(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
