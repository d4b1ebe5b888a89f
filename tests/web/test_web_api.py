"""The page's HTTP routes on the real API (uvicorn, tiny model): WebRTC offer -> a live stream, snapshot, windows."""

from __future__ import annotations

import asyncio
import io
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("aiortc")
pytest.importorskip("fastapi")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http"))

import httpx  # noqa: E402
from http_helpers import Served, replay_spec  # noqa: E402
from PIL import Image  # noqa: E402
from webrtc_helpers import browser_offer, complete  # noqa: E402


@pytest.fixture(scope="module")
def served():
    with Served((replay_spec("replay", seconds=4.0),)) as s:
        yield s


async def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.1):
    """Poll ``await predicate()`` until it returns a truthy value (bounded)."""
    async with asyncio.timeout(timeout_s):
        while True:
            value = await predicate()
            if value:
                return value
            await asyncio.sleep(poll_s)
    raise AssertionError(what)  # pragma: no cover


async def test_the_page_is_served_offline(served):
    async with httpx.AsyncClient(base_url=served.url) as http:
        page = await http.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "Use my camera" in page.text
        links = re.findall(r'(?:src|href)="([^"]*)"', page.text)
        assert sorted(links) == ["/static/app.js", "/static/style.css"]  # no CDN: everything from this server
        for name in ("app.js", "style.css"):
            asset = await http.get(f"/static/{name}")
            assert asset.status_code == 200 and asset.text
            assert "https://" not in asset.text and "import " not in asset.text and "url(" not in asset.text


async def test_a_snapshot_is_the_latest_frame_of_a_server_side_stream(served):
    async with httpx.AsyncClient(base_url=served.url) as http:
        async def snapshot():
            r = await http.get("/v1/streams/replay/snapshot.jpg")
            return r if r.status_code == 200 else None

        r = await wait_for(snapshot, 60, "no snapshot of the replayed stream")
        assert r.headers["content-type"] == "image/jpeg" and r.headers["cache-control"] == "no-store"
        image = Image.open(io.BytesIO(r.content))
        assert image.size == (112, 84)  # the synthetic 320x240 scene at max_side 112
        assert 0 < float(r.headers["x-frame-time-s"]) <= 4.0
        missing = await http.get("/v1/streams/nope/snapshot.jpg")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_stream"


async def test_bad_offers_get_json_errors(served):
    async with httpx.AsyncClient(base_url=served.url) as http:
        for body, code in (({"type": "offer"}, "bad_request"), ({"sdp": "v=0 garbage", "type": "offer"}, "bad_request"),
                           ({"sdp": "v=0", "type": "offer", "id": "bad id!"}, "bad_request"),
                           ({"sdp": "v=0", "type": "offer", "id": "replay"}, "conflict")):
            r = await http.post("/v1/webrtc/offer", json=body)
            assert r.status_code in (400, 409) and r.json()["error"]["code"] == code, (body, r.text)
        r = await http.post("/v1/webrtc/offer", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
        r = await http.post("/v1/webrtc/nobody/close")
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_stream"
        assert (await http.get("/healthz")).status_code == 200  # still serving


async def test_a_browser_stream_is_added_ingested_answered_and_removed_when_it_leaves(served):
    client = await browser_offer()
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
            r = await http.post("/v1/webrtc/offer", json={"sdp": client.localDescription.sdp, "type": "offer",
                                                          "id": "browser-test"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["id"] == "browser-test" and body["type"] == "answer" and body["kinds"] == ["audio", "video"]
            await complete(client, body["sdp"])
            listed = (await http.get("/v1/streams")).json()["data"]
            assert "browser-test" in [s["id"] for s in listed]

            async def av_window():
                windows = (await http.get("/v1/streams/browser-test/windows")).json()["windows"]
                return [w for w in windows if w["audio_tokens"] > 0 and w["video_tokens"] > 0]

            both = await wait_for(av_window, 60, "no window with both audio and video from the peer")
            w = both[0]
            assert 0 < w["audio_retention"] <= 1 and 0 < w["video_keep_ratio"] <= 1
            stats = (await http.get("/v1/streams/browser-test")).json()["stats"]
            assert stats["last_window"]["index"] >= w["index"]

            answer = await http.post("/v1/chat/completions", json={
                "model": "browser-test", "messages": [{"role": "user", "content": "What do you see?"}]})
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] is not None

            await http.post("/v1/webrtc/browser-test/close")  # the page's pagehide beacon

            async def gone():
                ids = [s["id"] for s in (await http.get("/v1/streams")).json()["data"]]
                return "browser-test" not in ids

            await wait_for(gone, 15, "the browser's stream was not removed")
    finally:
        await client.close()


async def test_a_peer_that_hangs_up_removes_its_stream(served):
    client = await browser_offer(video=False)
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
            r = await http.post("/v1/webrtc/offer", json={"sdp": client.localDescription.sdp, "type": "offer"})
            assert r.status_code == 200, r.text
            stream_id = r.json()["id"]
            assert stream_id.startswith("browser-") and r.json()["kinds"] == ["audio"]
            await complete(client, r.json()["sdp"])
            await wait_for(lambda: _has_windows(http, stream_id), 60, "no window from the audio-only peer")
            await client.close()  # no beacon: the connection itself ends

            async def gone():
                ids = [s["id"] for s in (await http.get("/v1/streams")).json()["data"]]
                return stream_id not in ids

            await wait_for(gone, 30, "the stream of a peer that hung up was not removed")
    finally:
        await client.close()


async def _has_windows(http, stream_id):
    return (await http.get(f"/v1/streams/{stream_id}/windows")).json()["windows"]


async def test_shutting_the_server_down_hangs_up_on_the_browsers():
    client = await browser_offer(video=False)
    try:
        with Served(()) as own:
            async with httpx.AsyncClient(base_url=own.url, timeout=60) as http:
                r = await http.post("/v1/webrtc/offer", json={"sdp": client.localDescription.sdp, "type": "offer"})
                assert r.status_code == 200, r.text
                await complete(client, r.json()["sdp"])
                await wait_for(lambda: _has_windows(http, r.json()["id"]), 60, "no window from the peer")
        closed = asyncio.Event()

        @client.on("connectionstatechange")
        def _state() -> None:
            if client.connectionState in ("closed", "failed"):
                closed.set()

        if client.connectionState not in ("closed", "failed"):
            async with asyncio.timeout(15):
                await closed.wait()
    finally:
        await client.close()
