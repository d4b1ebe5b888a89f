"""Standing questions from the server file (``watches:`` per stream), on a StreamServer, and ``--watch``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from watch_helpers import adapter_for, stream_config

from omnizip_stream.server.config import ServerConfig, ServerSettings, StreamSpec, load_server_config
from omnizip_stream.server.service import StreamServer
from omnizip_stream.watch.log import AlertLog
from omnizip_stream.watch.spec import WatchSpec


def _write(tmp_path, text):
    path = tmp_path / "server.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_server_file_takes_watches_per_stream(tmp_path):
    path = _write(tmp_path, """\
        model: tiny
        streams:
          - id: door
            source: synthetic
            watches:
              - {question: "Is a dog barking?", threshold: 0.5, debounce: 2, cooldown_s: 30, every_windows: 1}
              - "Is the door open?"
          - {id: yard, source: "synthetic:seed=2"}
        """)
    cfg = load_server_config(path, environ={})
    door, yard = cfg.streams
    assert door.watches == (WatchSpec("Is a dog barking?", threshold=0.5, debounce=2, cooldown_s=30.0, every_windows=1),
                            WatchSpec("Is the door open?"))
    assert yard.watches == ()


@pytest.mark.parametrize("entry, words", [
    ('watches: [{question: "dog?", threshold: 1.5}]', "stream 'door': watches[0]: bad watch threshold 1.5"),
    ('watches: [{question: "dog?", debounce: 0}]', "stream 'door': watches[0]: bad watch debounce 0"),
    ('watches: [{question: "dog?"}, {threshold: 0.5}]', "stream 'door': watches[1]: a watch needs a non-empty question"),
    ('watches: [{question: "dog?", every: 2}]', "unknown watch key 'every'"),
    ("watches: [" + ", ".join(['"q?"'] * 17) + "]", "at most 16 per stream"),
    ('watches: "dog?"', "watches must be a list"),
])
def test_bad_watches_in_the_server_file_are_one_line_errors(tmp_path, entry, words):
    path = _write(tmp_path, f"""\
        model: tiny
        streams:
          - {{id: door, source: synthetic, {entry}}}
        """)
    with pytest.raises(ValueError) as info:
        load_server_config(path, environ={})
    assert words in str(info.value) and "\n" not in str(info.value)


async def test_a_stream_server_registers_the_watches_logs_alerts_and_refuses_a_question_too_long(tiny25, tmp_path):
    too_long = WatchSpec("Is there a very large brown dog barking loudly at the front door of the house?")
    spec = StreamSpec("door", "synthetic", stream_config(max_question_tokens=64), realtime=False, duration_s=4.0,
                      max_side=112, watches=(WatchSpec("Is a dog barking?", id="dog", threshold=0.0), too_long))
    plain = StreamSpec("yard", "synthetic", stream_config(), realtime=False, duration_s=2.0, max_side=112)
    settings = ServerSettings(retry_min_s=0.01, retry_max_s=0.04, alerts_dir=str(tmp_path))
    async with StreamServer(ServerConfig(stream_config(), settings, (spec, plain)), adapter=adapter_for(tiny25)) as server:
        session = server.session("door")
        assert [w["id"] for w in session.watches.list()] == ["dog"]  # the long one refused; the stream goes on
        # a stream without watches in the file has its log too (watches registered later are logged, re-sent)
        assert server.session("yard").watches.log.path == tmp_path / "yard.alerts.jsonl"
        await server.stream("door").wait()
        await session.drain()
        assert session.stats()["windows_ingested"] == 2
    logged = AlertLog(tmp_path, "door").read()
    assert logged and {a["watch_id"] for a in logged} == {"dog"} and logged[0]["stream_id"] == "door"


def test_omnizip_stream_watch_prints_alerts_and_a_bad_one_is_a_one_line_error(tmp_path):
    env = {"PYTHONPATH": ".", "OMNIZIP_ALERTS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    base = [sys.executable, "-m", "omnizip_stream.cli", "stream", "--model", "tiny", "--source", "synthetic",
            "--no-realtime", "--no-interactive", "max_question_tokens=96"]
    out = subprocess.run([*base, "--duration", "2", "--watch", "Is a dog barking?", "--watch", "Is it dark?"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("ALERT ")]
    # threshold 0.5 on noise: whether each fires is not known, but every evaluation is logged as alerts or not
    logged = AlertLog(tmp_path, "default").read()
    assert len(lines) == len(logged)
    bad = subprocess.run([*base, "--duration", "2", "--watch", "   "], capture_output=True, text=True, timeout=300,
                         env=env)
    assert bad.returncode == 2 and "--watch" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
