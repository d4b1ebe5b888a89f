"""The amqtt broker process that :class:`~omnizip_stream.query.broker.EmbeddedBroker` starts without mosquitto.

Run as ``python .../amqtt_child.py HOST PORT`` (it imports only amqtt and the standard library). Prints ``ready`` on stdout once the
listener accepts connections, and exits when its stdin reaches end of file (the parent closed it, or
died: nothing is left behind even after a SIGKILL of the parent) or on SIGTERM. SIGINT is ignored: a
Ctrl-C in the terminal is for the parent, which shuts its MQTT server down first and then this broker.
Errors go to stderr; exit code 3 when the broker cannot start (e.g. the port is taken).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading

logger = logging.getLogger("omnizip_stream.query.amqtt_child")


def broker_config(host: str, port: int) -> dict[str, object]:
    """The amqtt configuration of a loopback, anonymous, memory-only MQTT 3.1.1 broker on ``host:port``."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(host: str, port: int) -> int:
    """Run the broker until stdin closes or SIGTERM; return the process exit code."""
    from amqtt.broker import Broker

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def watch_stdin() -> None:  # a thread: works for any stdin (pipe, /dev/null, file)
        with contextlib.suppress(OSError, ValueError):
            while sys.stdin.buffer.read(4096):
                pass
        loop.call_soon_threadsafe(stop.set)

    broker = Broker(broker_config(host, port))
    try:
        await broker.start()
    except Exception as exc:  # noqa: BLE001 - reported to the parent through stderr and the exit code
        print(f"amqtt could not listen on {host}:{port}: {exc}", file=sys.stderr, flush=True)
        return 3
    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    print("ready", flush=True)
    try:
        await stop.wait()
    finally:
        await broker.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``HOST PORT``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: amqtt_child.py HOST PORT", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.ERROR, format="amqtt: %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(args[0], int(args[1])))


if __name__ == "__main__":
    sys.exit(main())
