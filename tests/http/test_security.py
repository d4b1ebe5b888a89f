"""The API key, the loopback-only default, and the ``http:`` settings (file, flag, environment)."""

from __future__ import annotations

import textwrap

import httpx
import pytest
from http_helpers import replay_spec, served
from test_api import assert_error

from omnizip_stream.http.settings import (
    HttpSettings,
    parse_http_address,
    with_address,
)
from omnizip_stream.server.config import load_server_config

pytestmark = pytest.mark.timeout(180)


def test_with_a_key_every_api_route_needs_it_and_the_openai_client_sends_it():
    openai = pytest.importorskip("openai")
    with served(replay_spec("door"), settings=HttpSettings(port=0, api_key="s3cret-key")) as api:
        url = api.url
        for path in ("/v1/streams", "/v1/streams/door", "/metrics", "/v1/models"):
            error = assert_error(httpx.get(f"{url}{path}"), 401, "unauthorized")
            assert "missing" in error["message"]
            assert_error(httpx.get(f"{url}{path}", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
            assert httpx.get(f"{url}{path}", headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert httpx.get(f"{url}/v1/streams").headers["www-authenticate"] == "Bearer"
        assert_error(httpx.post(f"{url}/v1/streams", json={"id": "x", "source": "synthetic"}), 401, "unauthorized")
        assert_error(httpx.delete(f"{url}/v1/streams/door"), 401, "unauthorized")
        assert httpx.get(f"{url}/healthz").status_code == 200  # liveness probes carry no key
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret-key", max_retries=0, timeout=60)
        reply = good.chat.completions.create(model="door", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert reply.usage.completion_tokens >= 1
        bad = openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0, timeout=60)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="door", messages=[{"role": "user", "content": "hi"}])
        assert api.call(_ids) == ["door"]


async def _ids(server):
    return server.ids()


def test_without_a_key_only_requests_addressed_to_localhost_are_answered():
    with served() as api:
        port = api.url.rsplit(":", 1)[1]
        for host in ("evil.example", f"evil.example:{port}", "192.168.1.9"):  # DNS rebinding
            assert_error(httpx.get(f"{api.url}/v1/streams", headers={"Host": host}), 403, "forbidden")
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "localhost"):
            assert httpx.get(f"{api.url}/v1/streams", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)), (":9000", ("127.0.0.1", 9000)), ("9001", ("127.0.0.1", 9001)),
    ("0.0.0.0", ("0.0.0.0", 8000)), ("[::1]:8080", ("::1", 8080)), ("::1", ("::1", 8000)), ("localhost:0", ("localhost", 0)),
])
def test_http_addresses(text, expected):
    assert parse_http_address(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:http", "host:70000", "[::1", "a:b:c:d"])
def test_bad_http_addresses_are_one_line(text):
    with pytest.raises(ValueError, match="--http"):
        parse_http_address(text)


def test_a_network_address_needs_a_key():
    with pytest.raises(ValueError, match="OMNIZIP_API_KEY") as err:
        HttpSettings(host="0.0.0.0").check_bind()
    assert "\n" not in str(err.value)
    HttpSettings(host="0.0.0.0", api_key="k").check_bind()
    HttpSettings(host="localhost").check_bind()
    HttpSettings(host="::1").check_bind()


def test_the_http_mapping_of_a_server_file(tmp_path):
    (tmp_path / "api.key").write_text("file-key\n")
    base = "model: tiny\nstreams: [{id: door, source: synthetic}]\n"
    path = tmp_path / "server.yaml"
    path.write_text(base)
    assert load_server_config(path, environ={}).http is None  # no http: and no --http: HTTP is off
    path.write_text(base + "http: {}\n")
    assert load_server_config(path, environ={}).http == HttpSettings()
    path.write_text(base + textwrap.dedent("""\
        http: {host: 0.0.0.0, port: 8111, api_key_file: api.key, max_body_bytes: 4096}
        """))
    http = load_server_config(path, environ={"OMNIZIP_API_KEY": "env-key"}).http
    assert (http.host, http.port, http.api_key, http.max_body_bytes) == ("0.0.0.0", 8111, "file-key", 4096)
    assert "file-key" not in repr(http)
    path.write_text(base + "http: {port: 8111}\n")
    assert load_server_config(path, environ={"OMNIZIP_API_KEY": "env-key"}).http.api_key == "env-key"
    flagged = with_address(load_server_config(path, environ={}).http, "0.0.0.0:9")
    assert (flagged.host, flagged.port) == ("0.0.0.0", 9)
    assert with_address(None, ":7", environ={}) == HttpSettings(port=7)


@pytest.mark.parametrize(("http", "words"), [
    ("{api_key: abc}", "not read from the config file in clear text"),
    ("{port: 99999}", "http.port"),
    ("{hots: x}", "unknown http key"),
    ("{api_key_file: missing.key}", "cannot be read"),
    ("{max_body_bytes: 10}", "http.max_body_bytes"),
    ("[1]", "http must be a mapping"),
])
def test_bad_http_settings_are_one_line(tmp_path, http, words):
    path = tmp_path / "server.yaml"
    path.write_text(f"model: tiny\nhttp: {http}\nstreams: [{{id: door, source: synthetic}}]\n")
    with pytest.raises(ValueError, match=words) as err:
        load_server_config(path, environ={})
    assert "\n" not in str(err.value)
