"""The page in a real headless Chromium: fake camera + microphone -> WebRTC -> windows -> a streamed answer.

Marker ``browser``: not in the default run (``make test``); ``pytest -m browser`` runs it (``.ci/run``
installs Debian's chromium and runs it). It skips only where no Chromium or Playwright is installed.
The screenshot is left in ``$OMNIZIP_TEST_ARTIFACTS`` (default ``<repo>/tmp/artifacts/web-page.png``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import pytest
from browser_helpers import (
    artifacts_dir,
    chromium_args,
    chromium_path,
    make_fake_camera,
    make_fake_microphone,
)

pytestmark = pytest.mark.browser

pytest.importorskip("aiortc")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests drive Chromium with Playwright")
if chromium_path() is None:
    pytest.skip("no system Chromium (apt-get install chromium; .ci/run installs it)", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http"))

import httpx  # noqa: E402
from http_helpers import Served, stream_config  # noqa: E402

from omnizip_stream.server.config import StreamSpec  # noqa: E402
from omnizip_stream.watch.spec import WatchSpec  # noqa: E402


def poll(predicate, timeout_s: float, what: str, poll_s: float = 0.2):
    """Call ``predicate()`` until it returns a truthy value (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:g} s: {what}")


def test_the_page_streams_the_browsers_camera_and_answers_a_question(tmp_path):
    camera = make_fake_camera(tmp_path / "camera.y4m")
    microphone = make_fake_microphone(tmp_path / "microphone.wav")
    # a server-side stream, with a standing question that fires after every window (threshold 0)
    lobby = StreamSpec("lobby", "synthetic:seed=3", stream_config(max_question_tokens=96), loop=True, max_side=160,
                       watches=(WatchSpec("Is a dog barking?", id="dog", threshold=0.0),))
    shot = artifacts_dir() / "web-page.png"
    with Served((lobby,)) as served, httpx.Client(base_url=served.url, timeout=30) as http, \
            sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=chromium_args(camera, microphone),
                                     chromium_sandbox=False)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            console: list[str] = []
            page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
            page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
            page.goto(served.url + "/")
            page.wait_for_selector("#streams li[data-id=lobby]", timeout=15_000)

            page.click("#use-camera")
            stream_id = page.wait_for_function("() => window.omnizip.ownStream", timeout=30_000).json_value()
            assert stream_id.startswith("browser-"), console
            assert stream_id in [s["id"] for s in http.get("/v1/streams").json()["data"]]

            def av_windows():
                windows = http.get(f"/v1/streams/{stream_id}/windows").json()["windows"]
                return [w for w in windows if w["audio_tokens"] > 0 and w["video_tokens"] > 0]

            poll(av_windows, 60, f"the server ingested no window with audio and video from the browser {console}")
            counters = http.get(f"/v1/streams/{stream_id}").json()["stats"]["source"]  # the webrtc source's
            assert counters["audio_samples_out"] > 0 and counters["video_frames_out"] > 0, counters

            page.fill("#question", "What moves?")  # the tiny model takes 32-token questions
            page.click("#ask-button")
            page.wait_for_function("() => window.omnizip.answers >= 1 || "
                                   "document.getElementById('answer').classList.contains('error')", timeout=60_000)
            answer_meta = page.inner_text("#answer-meta")
            assert page.evaluate("window.omnizip.answers") == 1, (page.inner_text("#answer"), console)
            assert int(page.get_attribute("#answer", "data-pieces") or 0) >= 1, (answer_meta, console)
            assert "TTFT" in answer_meta and "saw " in answer_meta, answer_meta

            page.wait_for_function("() => Number(document.getElementById('chart').dataset.points) >= 2",
                                   timeout=30_000)
            page.wait_for_function("() => document.getElementById('windows').textContent !== '-'", timeout=15_000)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            page.click("#streams li[data-id=lobby]")  # a server-side stream: its latest frame, refreshed
            page.wait_for_function("() => { const img = document.getElementById('snapshot');"
                                   " return !img.hidden && img.complete && img.naturalWidth === 160; }", timeout=15_000)
            # the chart holds the lobby's whole series (backfilled), not only the windows since it was selected
            lobby_windows = len(http.get("/v1/streams/lobby/windows").json()["windows"])
            page.wait_for_function(f"() => Number(document.getElementById('chart').dataset.points) >= {lobby_windows}",
                                   timeout=15_000)
            # its alerts arrive on the page as they fire (the stream's event stream)
            page.wait_for_function("() => [...document.querySelectorAll('#alerts li')]"
                                   ".some((li) => li.textContent.startsWith('Is a dog barking?'))", timeout=20_000)
            page.screenshot(path=str(artifacts_dir() / "web-page-snapshot.png"), full_page=True)

            page.close(run_before_unload=True)  # leaving the page removes its stream
            poll(lambda: stream_id not in [s["id"] for s in http.get("/v1/streams").json()["data"]], 30,
                 "leaving the page did not remove its stream")
            assert not [line for line in console if line.startswith("pageerror")], console
        except BaseException:
            with contextlib.suppress(Exception):
                page.screenshot(path=str(artifacts_dir() / "web-page-failed.png"), full_page=True)
            raise
        finally:
            browser.close()


def test_with_an_api_key_the_page_asks_for_it_once_and_sends_it_on_every_call():
    from omnizip_stream.http.settings import HttpSettings

    lobby = StreamSpec("lobby", "synthetic:seed=3", stream_config(), loop=True, max_side=160)
    with Served((lobby,), HttpSettings(port=0, api_key="s3cret-key")) as served, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), chromium_sandbox=False)
        try:
            page = browser.new_page()
            page.goto(served.url + "/")  # the page itself needs no key; /v1/streams answers 401
            page.wait_for_selector("#key-form:not([hidden])", timeout=15_000)
            assert page.locator("#streams li").count() == 0
            page.fill("#key", "s3cret-key")
            page.click("#key-form button")
            page.wait_for_selector("#streams li[data-id=lobby].selected", timeout=15_000)
            # the event stream, the chart's series and the snapshot are read with the key too
            page.wait_for_function("() => document.getElementById('windows').textContent !== '-'", timeout=30_000)
            page.wait_for_function("() => Number(document.getElementById('chart').dataset.points) >= 1",
                                   timeout=30_000)
            page.wait_for_function("() => !document.getElementById('snapshot').hidden", timeout=15_000)
            assert page.evaluate("localStorage.getItem('omnizip_api_key')") == "s3cret-key"

            gone = httpx.delete(f"{served.url}/v1/streams/lobby", headers={"Authorization": "Bearer s3cret-key"})
            assert gone.status_code == 200, gone.text
            page.wait_for_function("() => document.getElementById('current').textContent === '(none selected)'"
                                   " && document.querySelectorAll('#streams li').length === 0", timeout=15_000)
        finally:
            browser.close()
