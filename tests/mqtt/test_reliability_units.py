"""Fair queue and outbox strike rules, without a broker."""

from __future__ import annotations

import asyncio

import pytest

from omnizip_stream.query.jobs import FairQueue
from omnizip_stream.query.outbox import Outbox, OutMessage, drain


def test_fair_queue_serves_routes_round_robin():
    q: FairQueue[str] = FairQueue()
    for item in ("a1", "a2", "a3"):
        assert q.push("a", item, capacity=10) is None
    assert q.push("b", "b1", capacity=10) is None
    assert [q.pop() for _ in range(4)] == ["a1", "b1", "a2", "a3"]


def test_full_fair_queue_evicts_the_newest_of_the_longest_route_for_a_shorter_one():
    q: FairQueue[str] = FairQueue()
    for i in range(4):
        q.push("flood", f"f{i}", capacity=4)
    assert q.push("flood", "f4", capacity=4) == "f4"  # the longest route itself is refused
    assert q.push("good", "g0", capacity=4) == "f3"  # a newcomer evicts the flood's newest
    assert len(q) == 4 and q.pop() == "f0" and q.pop() == "g0"


class _DroppingClient:
    """Publishes never acknowledged: the connection dies with them in flight."""

    def __init__(self) -> None:
        self.published: list[str] = []

    async def publish(self, topic, payload, **kwargs):  # noqa: ANN001, ANN003, ANN201
        self.published.append(topic)
        await asyncio.Event().wait()


async def _connection_dies(outbox: Outbox, client: _DroppingClient) -> None:
    task = asyncio.ensure_future(drain(client, outbox, qos=1, v5=False))
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_reply_unacknowledged_across_three_dead_connections_is_dropped():
    outbox = Outbox(100)
    for topic in ("suspect", "innocent"):
        outbox.put(OutMessage(topic, b"{}"))
    client = _DroppingClient()
    await _connection_dies(outbox, client)  # both in flight: one strike each, both kept
    assert client.published == ["suspect", "innocent"] and len(outbox) == 2
    await _connection_dies(outbox, client)  # the suspect now travels alone ... and dies again: kept once more
    assert client.published[2:] == ["suspect"] and outbox.dropped_poison == 0 and len(outbox) == 2
    await _connection_dies(outbox, client)  # alone, a third dead connection: poison
    assert client.published[3:] == ["suspect"]
    assert outbox.dropped_poison == 1 and len(outbox) == 1 and outbox.head_is_suspect()


async def test_a_publish_that_raises_before_the_wire_is_dropped_and_the_rest_flows():
    class Client:
        async def publish(self, topic, payload, **kwargs):  # noqa: ANN001, ANN003, ANN201
            topic.encode("utf-8")  # what paho does with the topic

    outbox = Outbox(100)
    outbox.put(OutMessage("x/\ud800", b"{}"))
    outbox.put(OutMessage("fine", b"{}"))
    task = asyncio.ensure_future(drain(Client(), outbox, qos=1, v5=False))
    await asyncio.wait_for(outbox.wait_idle(), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert outbox.dropped_poison == 1 and outbox.published == 1


@pytest.mark.parametrize("closing", [False, True])
async def test_replies_cut_off_by_our_own_shutdown_get_no_strike(closing):
    outbox = Outbox(100)
    outbox.closing = closing
    outbox.put(OutMessage("t", b"{}", strikes=2))
    await _connection_dies(outbox, _DroppingClient())
    assert (outbox.dropped_poison, len(outbox)) == ((0, 1) if closing else (1, 0))



@pytest.mark.parametrize("after_bytes", [0, 1])
async def test_a_broker_that_goes_away_during_the_connect_fails_it_at_once(after_bytes):
    """A broker restarting mid-handshake: the connect fails now, not after aiomqtt's 10-s timeout (the
    server then reconnects in well under a second, before questions pile up beyond the broker's queue)."""
    import time

    import aiomqtt

    from omnizip_stream.query.connection import make_client
    from omnizip_stream.query.mqtt_config import MqttConfig

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if after_bytes:
            await reader.read(after_bytes)  # the CONNECT has started
        writer.transport.abort()  # connection reset, no CONNACK

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = MqttConfig.from_url(f"mqtt://127.0.0.1:{port}", stream_id="cam1")
        client = make_client(cfg, "reset", persistent=True)
        for _ in range(2):  # the client is reused, as aiomqtt allows: its next attempt fails fast too
            t0 = time.monotonic()
            with pytest.raises(aiomqtt.MqttError):
                async with client:
                    pass
            assert time.monotonic() - t0 < 3
    finally:
        server.close()
        await server.wait_closed()
