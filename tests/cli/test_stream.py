"""``omnizip stream`` / ``demo`` / ``serve-mqtt`` end to end with the tiny model and real media."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omnizip_stream.cli import main
from omnizip_stream.cli.demo import DEMO_CONFIG
from omnizip_stream.config import load_config

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_stream_a_file_unpaced_answers_scripted_questions(capsys, media_dir):
    code, out, err = _run(capsys, "stream", "--source", f"file:{media_dir['av']}", "--no-realtime",
                          "--no-interactive", "--ask", "What moves?", "--ask", "What do you hear?", "--ask-every", "2",
                          "max_new_tokens=4", "video_max_pixels=12544")
    assert code == 0, err
    assert out.count("Q: ") == 2 and out.count("[first token") == 2
    assert "saw windows 0-" in out and "summary:" in out
    assert "RANDOM weights" in err and "Traceback" not in err


def test_stream_synthetic_paced_shows_status(capsys):
    code, out, err = _run(capsys, "stream", "--source", "synthetic", "--duration", "4", "--no-interactive",
                          "--status-interval", "0.5", "--config", str(REPO / "configs" / "tiny-cpu.yaml"))
    assert code == 0, err
    assert "windows 2" in out  # the summary: two 2-s windows
    assert "kept audio" in err and "KV " in err  # live status lines


def test_interactive_questions_from_stdin(media_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "omnizip_stream.cli", "stream", "--source", f"file:{media_dir['av']}", "--no-realtime",
         "--interactive", "max_new_tokens=3", "video_max_pixels=12544"],
        input="What is on screen?\n\nquit\n", capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Q: What is on screen?" in proc.stdout and "[first token" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--source", "camera"], "camera"),
    (["--source", "file:/no/such/file.mp4"], "/no/such/file.mp4"),
    (["--source", "bogus://x"], "URL scheme"),
    (["--config", "/no/such.yaml"], "does not exist"),
    (["nonsense_key=1"], "unknown config key"),
    (["window_s=3"], "window_s=3 is not a whole number of qwen2_5_omni's 2-s chunks"),
    (["saliency=global"], "a stream can only use saliency=block"),
    (["--model", "/no/such/model"], "cannot load model"),
])
def test_bad_input_is_a_one_line_error(capsys, args, message):
    code, _, err = _run(capsys, "stream", "--no-interactive", "--duration", "2", *args)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err


def test_corrupt_file_is_a_one_line_error(capsys, media_dir):
    code, _, err = _run(capsys, "stream", "--no-interactive", "--source", f"file:{media_dir['truncated']}",
                        "--no-realtime")
    assert code == 2 and "truncated.mp4" in err


def test_demo_config_matches_the_tiny_cpu_preset():
    assert DEMO_CONFIG == load_config(REPO / "configs" / "tiny-cpu.yaml")


def test_every_preset_loads():
    from omnizip_stream.config import read_config_file
    from omnizip_stream.server.config import load_server_config

    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_server_config(path) if "streams" in read_config_file(path) else load_config(path)


@pytest.mark.skipif(shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto")
                    and importlib.util.find_spec("amqtt") is None,
                    reason="neither mosquitto (Debian package) nor amqtt (pip) is installed")
@pytest.mark.broker
def test_serve_mqtt_answers_a_device(media_dir, tmp_path):
    """serve-mqtt on a file with an embedded broker (mosquitto, else amqtt); the scripts/mqtt_query.py client asks."""
    import socket
    import time

    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnizip_stream.cli", "serve-mqtt", "--stream-id", "cam1", "--source",
         f"file:{media_dir['av']}", "--no-realtime", "max_new_tokens=3", "video_max_pixels=12544"],
        stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = None
        deadline = time.time() + 120
        while time.time() < deadline and url is None:
            log.seek(0)
            for line in log.read().splitlines():
                if "MQTT: questions on omnizip/cam1/query at " in line:
                    url = line.split(" at ")[1].split(";")[0]
            time.sleep(0.2)
        assert url, "serve-mqtt did not come up"
        host, port = url.split("//")[1].split(":")
        with socket.create_connection((host, int(port)), timeout=5):
            pass
        log.seek(0)
        v311 = ["--v311"] if "MQTT 3.1.1 only" in log.read() else []  # amqtt
        asked = subprocess.run([sys.executable, str(REPO / "scripts" / "mqtt_query.py"), "--broker", url,
                                "--stream-id", "cam1", *v311, "--json", "What moved?"],
                               capture_output=True, text=True, timeout=120)
        assert asked.returncode == 0, asked.stderr
        assert '"answer"' in asked.stdout and '"window_range"' in asked.stdout
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


@pytest.mark.skipif(Path(sys.prefix).resolve() != (REPO / ".venv").resolve() or shutil.which("make") is None,
                    reason="`make demo` is checked from the repository's own .venv")
def test_make_demo_runs_the_main_job():
    proc = subprocess.run(["make", "demo"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("[first token") >= 3
    assert "summary:" in proc.stdout
    assert "RANDOM weights" in proc.stderr and "huggingface-cli download" in proc.stderr


def test_webcam_assistant_without_a_camera_lists_devices():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "webcam_assistant.py"), "--model", "tiny"],
                          input="", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "camera" in proc.stderr.lower() and "Traceback" not in proc.stderr


def test_webcam_assistant_answers_typed_questions_on_a_file(media_dir):
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "webcam_assistant.py"), "--source", f"file:{media_dir['av']}",
         "--model", "tiny", "max_new_tokens=3", "video_max_pixels=12544"],
        input="What is there?\nquit\n", capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Q: What is there?" in proc.stdout and "[first token" in proc.stdout


def test_webcam_assistant_answers_while_an_endless_source_runs():
    """The prompt is live from the first window: with a source that never ends the answer still comes."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "webcam_assistant.py"), "--source", "synthetic", "--model", "tiny",
         "max_new_tokens=3", "video_max_pixels=12544"],
        input="What is there?\nquit\n", capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Q: What is there?" in proc.stdout and "saw windows 0-" in proc.stdout

