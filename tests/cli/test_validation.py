"""Bad values are refused up front: one line, exit code 2, before any model is loaded (issues 11 and 12)."""

from __future__ import annotations

import json
import time

import pytest

from omnizip_stream.cli import main
from omnizip_stream.config import StreamConfig, load_config

BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    + ["system_prompt: *i"]
)


def _run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(code, err, *needles):
    lines = [line for line in err.strip().splitlines() if not line.startswith("note:")]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if anything tries to load a model: validation must come first."""
    import omnizip.adapters.loading as loading

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was validated")

    monkeypatch.setattr(loading, "load_adapter", boom)


@pytest.mark.parametrize("override,needles", [
    ("method=omnizipp", ["unknown method 'omnizipp'", "valid methods: dycoke, identity, omnizip, random, uniform"]),
    ("window_s=inf", ["window_s", "finite"]),
    ("window_s=1e12", ["window_s must be in [1, 60]"]),
    ("cache_max_mb=nan", ["cache_max_mb", "finite"]),
    ("cache_max_mb=.inf", ["cache_max_mb"]),
    ("video_max_pixels=1e12", ["video_max_pixels must be in [784, 12845056]"]),
    ("system_prompt=" + "x" * 100_000, ["system_prompt is 100000 characters"]),
    ("max_new_tokens=1000000", ["max_new_tokens must be in [1, 8192]"]),
    ("seed=-1", ["seed"]),
    ("device=gpu", ["device must be"]),
    ("dtype=float8", ["dtype must be one of"]),
    ("attn=magic", ["attn must be one of"]),
])
def test_bad_config_values_are_one_line_errors_before_loading(capsys, no_model_load, override, needles):
    for command in (["stream", "--no-interactive", "--duration", "2"], ["infer", "--video", "x.mp4", "--question", "q"]):
        code, _, err = _run(capsys, *command, override)
        _one_line_error(code, err, *needles)
        assert len(err) < 400  # the 100k-character value is not echoed back


@pytest.mark.parametrize("text,needle", [
    ("method: omnizipp\n", "unknown method 'omnizipp'"),
    ("window_s: .inf\n", "window_s"),
    ("cache_max_mb: .nan\n", "cache_max_mb"),
    ("video_max_pixels: 1.0e+12\n", "video_max_pixels must be in"),
    ("g: [1, 2]\n", "g must be a single int"),
])
def test_bad_values_in_yaml(capsys, no_model_load, tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, _, err = _run(capsys, "stream", "--no-interactive", "--config", str(path))
    _one_line_error(code, err, needle)


def test_yaml_alias_bomb_is_refused_quickly(capsys, no_model_load, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 600
    t0 = time.perf_counter()
    code, _, err = _run(capsys, "stream", "--no-interactive", "--config", str(path))
    assert time.perf_counter() - t0 < 5.0
    _one_line_error(code, err, "aliases")


@pytest.mark.parametrize("args,needle", [
    (["--max-side", "0"], "--max-side: must be in [16, 8192]"),
    (["--duration", "nan"], "--duration: expected a finite number"),
    (["--duration", "-1"], "--duration: must be positive"),
    (["--status-interval", "inf"], "--status-interval"),
    (["--ask-every", "0"], "--ask-every"),
])
def test_bad_flag_values_are_one_line_errors(capsys, no_model_load, args, needle):
    code, _, err = _run(capsys, "stream", "--no-interactive", *args)
    _one_line_error(code, err, needle)


def test_window_must_be_whole_model_chunks():
    from types import SimpleNamespace

    spec = SimpleNamespace(family="f", seconds_per_chunk=4.0, second_per_grid=1.0)
    StreamConfig(window_s=8.0).check_model(spec)
    with pytest.raises(ValueError, match="whole number of f's 4-s chunks"):
        StreamConfig(window_s=2.0).check_model(spec)


def test_every_preset_is_within_range():
    from omnizip_stream.presets import available_presets

    for name in available_presets():
        load_config(name)


# ------------------------------------------------------------------ infer


def test_infer_rejects_an_empty_question(capsys, no_model_load, media_dir):
    code, _, err = _run(capsys, "infer", "--video", media_dir["av"], "--question", "  \n ")
    _one_line_error(code, err, "--question is empty")


@pytest.mark.parametrize("flags,needle", [
    (["--method", "random", "--g", "5"], "--g does nothing for method 'random'"),
    (["--method", "identity", "--rho-video", "0.7"], "--rho-video does nothing for method 'identity'"),
    (["--method", "dycoke", "--saliency", "block"], "--saliency does nothing for method 'dycoke'"),
    (["method=random", "g=5"], "g=5 does nothing for method 'random'"),
])
def test_flags_that_do_nothing_for_the_method_are_refused(capsys, no_model_load, media_dir, flags, needle):
    code, _, err = _run(capsys, "infer", "--video", media_dir["av"], "--question", "q", *flags)
    _one_line_error(code, err, needle)


def test_a_preset_does_not_trip_the_method_check(capsys, media_dir):
    """omnizip-35 sets g and anchor_ratio; --method random on top of it is fine (only given flags count)."""
    code, out, err = _run(capsys, "infer", "--model", "tiny", "--video", media_dir["av"], "--question", "q",
                          "--config", "omnizip-35", "--method", "random", "--max-new-tokens", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["settings"]["rho_video"] == 0.7


def test_infer_reports_retention_per_modality_and_the_settings(capsys, media_dir):
    code, out, err = _run(capsys, "infer", "--model", "tiny", "--video", media_dir["av"], "--question",
                          "a long question " * 30, "--rho-audio", "0.4", "--rho-video", "0.7", "--max-new-tokens", "2",
                          "--json")
    assert code == 0, err
    result = json.loads(out)
    ret = result["retention"]
    a_kept, a_total = result["audio_tokens_kept"], result["audio_tokens_total"]
    v_kept, v_total = result["video_tokens_kept"], result["video_tokens_total"]
    assert ret["audio"] == round(a_kept / a_total, 4) and ret["video"] == round(v_kept / v_total, 4)
    assert ret["audio_video"] == round((a_kept + v_kept) / (a_total + v_total), 4)
    # question tokens are not counted as retained A/V tokens: the whole prompt's ratio is higher
    assert result["tokens_kept"] / result["tokens_total"] > ret["audio_video"] + 0.02
    s = result["settings"]
    assert (s["method"], s["rho_audio"], s["rho_video"], s["g"], s["saliency"]) == ("omnizip", 0.4, 0.7, 3, "global")


def test_infer_text_reports_av_retention(capsys, media_dir):
    code, out, err = _run(capsys, "infer", "--model", "tiny", "--video", media_dir["av"], "--question", "q",
                          "--max-new-tokens", "2")
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    assert "A/V tokens kept" in last and "audio " in last and "video " in last


@pytest.fixture(scope="module")
def short_media(tmp_path_factory):
    import numpy as np
    from omni_helpers import make_media
    from PIL import Image

    d = tmp_path_factory.mktemp("short")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(d / "still.png")
    return {"png": str(d / "still.png"), "tenth": str(make_media(d / "tenth.mp4", seconds=0.1, layout="mono"))}


@pytest.mark.parametrize("kind", ["png", "tenth"])
def test_infer_says_when_a_clip_holds_nothing_to_answer_from(capsys, short_media, kind):
    code, out, err = _run(capsys, "infer", "--model", "tiny", "--video", short_media[kind], "--question", "What?")
    _one_line_error(code, err, "nothing to answer from", short_media[kind])
    assert out == ""


def test_infer_too_sparse_frames_say_what_to_do(capsys, media_dir):
    code, _, err = _run(capsys, "infer", "--model", "tiny", "--video", media_dir["av"], "--question", "q",
                        "--max-frames", "2")
    _one_line_error(code, err, "needs at least 1 fps", "--max-frames 5", "omnizip stream")


def test_long_clips_are_refused_before_encoding(tiny25):
    """The 13-min crash and the 1-hour clip: checked from the sample and frame counts, no encoding."""
    from omnizip.adapters.loading import load_adapter
    from omnizip.qa import ContextTooLongError, check_clip

    adapter = load_adapter("tiny", device="cpu")
    t0 = time.perf_counter()
    with pytest.raises(ContextTooLongError, match="at least 1 fps: pass --max-frames 781"):
        check_clip(adapter, 780 * 16000, 768, video_fps=768 / 780)
    with pytest.raises(ContextTooLongError, match="positions up to .*omnizip stream"):
        check_clip(adapter, 3600 * 16000, 768, video_fps=768 / 3600)
    assert time.perf_counter() - t0 < 1.0
    assert check_clip(adapter, 60 * 16000, 120, video_fps=2.0) < adapter.spec.max_positions


@pytest.fixture
def no_decoding(monkeypatch):
    import omnizip_stream.media as media

    def boom(*args, **kwargs):
        raise AssertionError("the clip was decoded before its length was checked")

    monkeypatch.setattr(media, "decode_clip", boom)


def test_infer_checks_the_clip_length_before_decoding(capsys, media_dir, no_decoding):
    code, _, err = _run(capsys, "infer", "--model", "tiny", "--video", media_dir["av"], "--question", "q",
                        "--max-frames", "2")
    _one_line_error(code, err, "needs at least 1 fps", "--max-frames 5")


def test_infer_refuses_an_hour_long_clip_before_decoding(capsys, monkeypatch, media_dir, no_decoding):
    import omnizip_stream.cli.infer as infer

    monkeypatch.setattr(infer, "probe_duration_s", lambda path: 3600.0)
    t0 = time.perf_counter()
    code, _, err = _run(capsys, "infer", "--model", "tiny", "--video", media_dir["av"], "--question", "q")
    assert time.perf_counter() - t0 < 30.0
    _one_line_error(code, err, "the clip is 3600 s", "positions up to", "omnizip stream --source file:PATH")


def test_score_dtype_reaches_the_compressor_and_bad_values_are_refused():
    from omnizip_stream.config import StreamConfig

    assert StreamConfig().compression.score_dtype == "float32"
    assert StreamConfig().replace(score_dtype="bfloat16").compression.score_dtype == "bfloat16"
    with pytest.raises(ValueError, match="score_dtype must be one of float32, bfloat16"):
        StreamConfig().replace(score_dtype="float16")
