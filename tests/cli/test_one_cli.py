"""One CLI (issue 11 item 6): the same config and model flags everywhere, presets in the package, help, version."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from omnizip_stream.cli import SUBCOMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[2]
COMMON = ["--config", "omnizip-35", "--model", "tiny", "--device", "cpu", "--dtype", "float32", "--attn", "eager",
          "-v", "rho_video=0.6"]
REQUIRED = {  # the subcommands' own required flags
    "infer": ["--video", "clip.mp4", "--question", "q"],
    "bench": ["--out", "runs/x"],
    "eval": ["--out", "runs/x"],
}


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_takes_presets_overrides_model_flags_and_v(command):
    args = build_parser().parse_args([command, *REQUIRED.get(command, []), *COMMON])
    assert (args.config, args.model, args.device, args.dtype, args.attn) == (
        "omnizip-35", "tiny", "cpu", "float32", "eager")
    assert args.overrides == ["rho_video=0.6"] and args.verbose == 1


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_help_shows_defaults_and_an_example(capsys, command):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "(default" in out
    example = out.split("example:\n", 1)[1].strip()
    assert example.startswith(f"omnizip {command}")


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip().startswith("omnizip 0.")


def test_usage_errors_are_one_line(capsys):
    assert main(["stream", "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --no-such-flag" in err


def test_v_after_the_subcommand_turns_on_logging(media_dir):
    proc = subprocess.run([sys.executable, "-m", "omnizip_stream.cli", "infer", "--model", "tiny", "--video",
                           media_dir["missing"], "--question", "q", "-v"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert " INFO omnizip_stream.cli.infer: model tiny" in proc.stderr


def test_presets_in_the_package_equal_configs():
    from omnizip_stream.presets import PRESETS_DIR

    shipped = {p.name: p.read_bytes() for p in PRESETS_DIR.glob("*.yaml")}
    repo = {p.name: p.read_bytes() for p in (REPO / "configs").glob("*.yaml")}
    assert shipped == repo, "configs/*.yaml and omnizip_stream/presets/*.yaml must be identical (copy them over)"


def test_a_preset_name_works_outside_the_repository(tmp_path):
    code = ("from omnizip_stream.config import load_config; c = load_config('qwen2.5-omni-7b'); "
            "d = load_config('configs/tiny-cpu.yaml'); print(c.model, c.cache_max_tokens, d.model)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Qwen/Qwen2.5-Omni-7B", "24576", "tiny"]


def test_an_unknown_preset_lists_the_shipped_ones(capsys):
    assert main(["stream", "--no-interactive", "--config", "qwen9-omni"]) == 2
    err = capsys.readouterr().err
    assert "qwen9-omni" in err and "qwen2.5-omni-7b, qwen3-omni, tiny-cpu" in err


def test_the_wheel_ships_the_presets(tmp_path):
    src = tmp_path / "src"  # a copy: building in place would leave build/ in the checkout
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("omnizip", "omnizip_stream"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                           "-w", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip("pip/setuptools cannot build here")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in (REPO / "configs").glob("*.yaml"):
        assert f"omnizip_stream/presets/{preset.name}" in names


def test_demo_takes_presets_and_overrides(capsys, no_mqtt_demo_args=("--no-mqtt", "--no-realtime", "--duration", "2")):
    code = main(["demo", *no_mqtt_demo_args, "--config", "omnizip-45", "max_new_tokens=2"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "rho_audio=0.3 / rho_video=0.6" in err
