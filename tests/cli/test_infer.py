"""``omnizip infer`` end to end on generated media with the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from omnizip_stream.cli import main


def _infer(capsys, *args):
    code = main(["infer", "--model", "tiny", "--question", "What moves?", "--max-new-tokens", "4", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("kind", ["av", "video_only", "audio_only"])
def test_infer_json_reports_token_accounting(capsys, media_dir, kind):
    code, out, err = _infer(capsys, "--video", media_dir[kind], "--json", "--rho-audio", "0.4", "--rho-video", "0.7")
    assert code == 0, err
    result = json.loads(out)
    for key in ("answer", "tokens_total", "tokens_kept", "audio_tokens_total", "audio_tokens_kept",
                "video_tokens_total", "video_tokens_kept", "prefill_ms", "method"):
        assert key in result
    assert result["method"] == "omnizip" and result["random_weights"] is True
    assert 0 < result["tokens_kept"] < result["tokens_total"]
    if kind == "audio_only":
        assert result["video_tokens_total"] == 0 and result["audio_tokens_total"] == 75  # 3 s at 25/s
    else:
        assert result["video_tokens_total"] > 0 and result["video_tokens_kept"] < result["video_tokens_total"]
    if kind == "video_only":
        assert result["audio_tokens_total"] == 0
    assert "RANDOM weights" in err


def test_infer_text_output_and_identity_keeps_everything(capsys, media_dir):
    code, out, err = _infer(capsys, "--video", media_dir["av"], "--method", "identity")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[-1].startswith("[identity] A/V tokens kept ")
    total = lines[-1].split("tokens kept ")[1].split(" ")[0]
    kept, all_ = total.split("/")
    assert kept == all_ and "(100.0%)" in lines[-1]


@pytest.mark.parametrize("kind,message", [
    ("missing", "does_not_exist.mp4"),
    ("not_media", "not_media.mp4"),
    ("truncated", "truncated.mp4"),
])
def test_bad_media_is_a_one_line_error(capsys, media_dir, kind, message):
    code, out, err = _infer(capsys, "--video", media_dir[kind])
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


@pytest.mark.parametrize("flags,message", [
    (["--method", "nope"], "unknown method 'nope'; valid methods: dycoke, identity, omnizip, omnizip-lbyl, random, uniform"),
    (["--rho-video", "1.5"], "rho_video"),
    (["--model", "/no/such/checkpoint"], "cannot load model"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["vision_budget=audio"], "vision_budget=audio works on live streams only"),
])
def test_bad_flags_are_one_line_errors(capsys, media_dir, flags, message):
    code, _, err = _infer(capsys, "--video", media_dir["av"], *flags)
    assert code == 2 and message in err and err.count("\n") == 1


def test_question_longer_than_the_context(capsys, media_dir):
    code = main(["infer", "--model", "tiny", "--video", media_dir["av"], "--question", "why " * 40000])
    err = capsys.readouterr().err
    assert code == 2 and "positions up to" in err


def test_console_script_exit_code(media_dir):
    proc = subprocess.run([sys.executable, "-m", "omnizip_stream.cli", "infer", "--model", "tiny", "--video",
                           media_dir["not_media"], "--question", "hi"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
