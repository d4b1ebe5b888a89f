"""Run an MqttQueryServer with the fake service in its own process (killed by test_status.py).

Usage: mqtt_server_proc.py URL STREAM_ID [PROTOCOL]
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from mqtt_helpers import FakeService, fast_config  # noqa: E402

from omnizip_stream.query.mqtt import MqttQueryServer  # noqa: E402


async def main(url: str, stream_id: str, protocol: str = "5") -> None:
    server = MqttQueryServer(FakeService(), fast_config(url, stream_id, keepalive_s=60, protocol=protocol))
    task = asyncio.ensure_future(server.run())
    await server.wait_connected(10)
    print("ready", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
