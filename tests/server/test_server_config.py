"""The server file: stream defaults at the top level, ``server:`` settings, ``streams:`` with per-stream overrides."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from omnizip_stream.config import StreamConfig
from omnizip_stream.server.config import (
    ServerSettings,
    StreamSpec,
    load_server_config,
    stream_spec_from_mapping,
)

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, text):
    path = tmp_path / "server.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_server_settings_and_per_stream_overrides(tmp_path):
    (tmp_path / "admin.token").write_text("s3cret\n")
    path = write(tmp_path, """\
        model: tiny
        rho_video: 0.5
        max_new_tokens: 12
        server: {max_batch: 4, kv_budget_mb: 512, admin_token_file: admin.token, retry_max_s: 5, prepare_threads: 2}
        streams:
          - {id: door, source: "rtsp://u:p@10.0.0.5/s", rho_video: 0.7}
          - {id: kitchen, source: "synthetic:seed=2", loop: true, max_side: 320, realtime: false}
        """)
    cfg = load_server_config(path, ["max_new_tokens=20"], environ={})
    assert cfg.defaults == StreamConfig(model="tiny", max_new_tokens=20).replace(rho_video=0.5)
    assert cfg.server == ServerSettings(kv_budget_mb=512, max_batch=4, admin_token="s3cret", retry_max_s=5,
                                       prepare_threads=2)
    assert "s3cret" not in repr(cfg.server)
    door, kitchen = cfg.streams
    assert door == StreamSpec("door", "rtsp://u:p@10.0.0.5/s", cfg.defaults.replace(rho_video=0.7))
    assert kitchen.config == cfg.defaults and (kitchen.loop, kitchen.max_side, kitchen.realtime) == (True, 320, False)


def test_the_admin_token_comes_from_the_environment_never_the_file(tmp_path):
    path = write(tmp_path, "streams: [{id: a, source: synthetic}]\n")
    assert load_server_config(path, environ={"OMNIZIP_ADMIN_TOKEN": "t0k"}).server.admin_token == "t0k"
    assert load_server_config(path, environ={}).server.admin_token is None
    path = write(tmp_path, "server: {admin_token: hunter2}\nstreams: [{id: a, source: synthetic}]\n")
    with pytest.raises(ValueError, match="admin_token_file") as err:
        load_server_config(path, environ={})
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(("streams", "message"), [
    ("[{id: a, source: synthetic}, {id: a, source: camera}]", "stream 'a': duplicate id"),
    ("[{id: 'a/b', source: synthetic}]", r"streams\[0\]: stream id 'a/b' must be 1-128 characters"),
    ("[{id: server, source: synthetic}]", r"streams\[0\]: stream id 'server' is reserved"),
    ("[{id: a, source: synthetic}, {source: camera}]", r"streams\[1\]: missing key 'id'"),
    ("[{id: a}]", "stream 'a': missing key 'source'"),
    ("[{id: a, source: synthetic, rho_vidoe: 0.7}]", "stream 'a': unknown config key.*rho_vidoe"),
    ("[{id: a, source: synthetic, model: small}]", "stream 'a': model cannot be set per stream"),
    ("[{id: a, source: synthetic, device: cuda}]", "stream 'a': device cannot be set per stream"),
    ("[{id: a, source: synthetic, rho_video: 2}]", r"stream 'a': rho_video must be in \[0, 1\]"),
    ("[{id: a, source: 'bogus:thing'}]", "stream 'a': source: unknown source kind 'bogus'"),
    ("[{id: a, source: synthetic, loop: maybe}]", "stream 'a': loop must be true or false"),
    ("{id: a, source: synthetic}", "streams must be a list"),
])
def test_mistakes_are_one_line_naming_the_stream_and_key(tmp_path, streams, message):
    path = write(tmp_path, f"model: tiny\nstreams: {streams}\n")
    with pytest.raises(ValueError, match=message) as err:
        load_server_config(path, environ={})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("text", "message"), [
    ("model: tiny\n", "no 'streams:' list"),
    ("rho_vidoe: 1\nstreams: []\n", "unknown config key.*rho_vidoe.*server, streams"),
    ("server: {max_batch: 0}\nstreams: []\n", r"server.max_batch must be a whole number in \[1, 1024\]"),
    ("server: {prepare_threads: -1}\nstreams: []\n", r"server.prepare_threads must be a whole number in \[0, 64\]"),
    ("server: {batch: 2}\nstreams: []\n", "unknown server key.*'batch'"),
    ("server: {admin_token_file: nope.token}\nstreams: []\n", "admin_token_file .*nope.token.* cannot be read"),
])
def test_bad_server_settings(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_server_config(write(tmp_path, text), environ={})


def test_a_missing_server_file_names_the_shipped_ones(tmp_path):
    with pytest.raises(ValueError, match="server file .*nope.yaml' does not exist; shipped server files: server$"):
        load_server_config(tmp_path / "nope.yaml")


def test_an_add_request_is_checked_by_the_same_rules():
    defaults = StreamConfig(model="tiny").replace(rho_video=0.5)
    spec = stream_spec_from_mapping({"id": "yard", "source": "camera:1", "rho_audio": 0.2}, defaults)
    assert spec == StreamSpec("yard", "camera:1", defaults.replace(rho_audio=0.2))
    with pytest.raises(ValueError, match="stream 'yard': model cannot be set per stream"):
        stream_spec_from_mapping({"id": "yard", "source": "camera", "model": "x"}, defaults)
    with pytest.raises(ValueError, match="stream must be a mapping"):
        stream_spec_from_mapping(["yard"], defaults)


def test_the_shipped_example_loads():
    cfg = load_server_config(REPO / "configs" / "server.yaml", environ={})
    assert cfg.defaults.model == "tiny" and [s.id for s in cfg.streams] == ["door", "kitchen", "lobby"]
    assert load_server_config("server", environ={}) == cfg  # also by name, as a shipped preset
