"""StreamConfig: every compression setting is a key (flat, alias, dotted or nested), window_s from the model (issue 14)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from omni_helpers import make_adapter

from omnizip.config import OmniZipConfig
from omnizip_stream.cli import build_parser, main
from omnizip_stream.cli._common import resolve_config
from omnizip_stream.config import (
    COMPRESSION_KEYS,
    StreamConfig,
    StreamConfigError,
    config_from_mapping,
    load_config,
    read_config_file,
)
from omnizip_stream.engine import StreamEngine
from omnizip_stream.presets import available_presets
from omnizip_stream.session import StreamSession

# A non-default value for every OmniZipConfig field a user can choose (mode is always streaming for a stream,
# saliency must stay block and seed is the config's own key: those three are tested on their own below).
NEW_VALUES = {
    "rho_audio": 0.45, "rho_video": 0.65, "g": 5, "anchor_ratio": 0.1, "rho_min": 0.3, "rho_max": 0.8, "knn_k": 7,
    "controller_horizon": 12, "controller_tolerance": 0.05, "stream_audio_scope": "window", "score_dtype": "bfloat16",
}
EXPECTED = OmniZipConfig(mode="streaming", saliency="block", seed=9, **NEW_VALUES)


def test_the_table_covers_every_compression_field():
    assert set(COMPRESSION_KEYS) == {f.name for f in dataclasses.fields(OmniZipConfig)} - {"seed"}
    assert set(NEW_VALUES) | {"mode", "saliency"} == set(COMPRESSION_KEYS)
    assert all(getattr(OmniZipConfig(), k) != v for k, v in NEW_VALUES.items())


def _yaml(values: dict) -> str:
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items())


@pytest.fixture
def engine_for(adapter25):
    return lambda cfg: StreamEngine(adapter25, cfg)


@pytest.mark.parametrize("form", ["yaml_flat", "yaml_nested", "yaml_aliases", "cli_overrides", "cli_dotted"])
def test_every_compression_field_reaches_the_compressor(tmp_path, engine_for, form):
    path = tmp_path / "c.yaml"
    argv = ["stream", "--model", "tiny"]
    if form == "yaml_flat":
        path.write_text(_yaml({**NEW_VALUES, "seed": 9}))
    elif form == "yaml_nested":
        nested = "".join(f"  {line}\n" for line in _yaml(NEW_VALUES).splitlines())
        path.write_text(f"seed: 9\ncompression:\n{nested}")
    elif form == "yaml_aliases":  # the short names horizon / tolerance / scope
        short = {"controller_horizon": "horizon", "controller_tolerance": "tolerance", "stream_audio_scope": "scope"}
        path.write_text(_yaml({short.get(k, k): v for k, v in NEW_VALUES.items()} | {"seed": 9}))
    if form.startswith("yaml"):
        argv += ["--config", str(path)]
    else:
        prefix = "compression." if form == "cli_dotted" else ""
        argv += [f"{prefix}{k}={v}" for k, v in NEW_VALUES.items()] + ["seed=9"]
    cfg = resolve_config(build_parser().parse_args(argv))
    assert cfg.compression == EXPECTED
    engine = engine_for(cfg)
    assert engine.compressor.config == EXPECTED


def test_the_method_flags_set_the_compression_and_win_over_overrides(engine_for):
    """``omnizip infer``'s method flags (the one subcommand that has them) route into ``compression``."""
    args = build_parser().parse_args(["infer", "--video", "x.mp4", "--question", "q", "--rho-audio", "0.45",
                                      "--rho-video", "0.65", "--g", "5", "--anchor-ratio", "0.1",
                                      "compression.rho_video=0.2", "knn_k=7"])
    cfg = resolve_config(args)
    comp = engine_for(cfg).compressor.config
    assert (comp.rho_audio, comp.rho_video, comp.g, comp.anchor_ratio, comp.knn_k) == (0.45, 0.65, 5, 0.1, 7)


def test_a_nested_mapping_and_flat_keys_together_and_per_stream_overrides():
    """The server's per-stream form: {id, source, rho_video: 0.7} on top of the file's defaults."""
    defaults = config_from_mapping({"compression": {"rho_min": 0.3, "knn_k": 9}, "cache_max_tokens": 4096})
    door = config_from_mapping({"rho_video": 0.7, "horizon": 4}, defaults)
    assert (door.compression.rho_video, door.compression.rho_min, door.compression.knn_k) == (0.7, 0.3, 9)
    assert door.compression.controller_horizon == 4 and door.cache_max_tokens == 4096
    assert defaults.compression.rho_video == 0.6  # the base is not changed
    assert door.replace(knn_k=3).compression.knn_k == 3  # replace takes the flat keys too


def test_mode_is_streaming_and_seed_follows_the_config():
    cfg = StreamConfig(compression=OmniZipConfig(rho_video=0.7, seed=3), seed=4)
    assert (cfg.compression.mode, cfg.compression.seed) == ("streaming", 4)
    assert config_from_mapping({"compression": {"seed": 5, "mode": "streaming"}}).seed == 5
    assert config_from_mapping({"seed": 6}).compression.seed == 6


@pytest.mark.parametrize("name", available_presets())
def test_old_flat_presets_load_unchanged(name):
    cfg = load_config(name)
    for key, value in read_config_file(name).items():
        got = getattr(cfg.compression, key) if key in COMPRESSION_KEYS else getattr(cfg, key)
        assert got == value, key
    assert config_from_mapping(dataclasses.asdict(cfg)) == cfg  # a dump reads back
    dump = json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert dump["compression"]["rho_video"] == cfg.compression.rho_video and dump["model"] == cfg.model


def test_the_35_preset_keeps_its_ratios():
    comp = load_config("omnizip-35").compression
    assert (comp.rho_audio, comp.rho_video, comp.g, comp.anchor_ratio) == (0.4, 0.7, 3, 0.05)


@pytest.mark.parametrize("values,needles", [
    ({"knn_kk": 3}, ["unknown config key(s) 'knn_kk'", "knn_k", "controller_horizon", "aliases: horizon="]),
    ({"compression": {"window_s": 4}}, ["unknown compression key(s) 'compression.window_s'", "rho_min"]),
    ({"compression.bogus": 1}, ["unknown compression key(s) 'compression.bogus'"]),
    ({"knn_k": 0}, ["knn_k must be in [1, 1024], got 0"]),
    ({"horizon": "x"}, ["controller_horizon must be int"]),
    ({"tolerance": 1.5}, ["controller_tolerance must be in (0, 1)"]),
    ({"scope": "all"}, ["stream_audio_scope must be one of trailing, window; got 'all'"]),
    ({"rho_min": 0.9}, ["rho_min (0.9) must not exceed rho_max (0.75)"]),
    ({"compression": {"rho_max": 2}}, ["rho_max must be in [0, 1], got 2"]),
    ({"mode": "offline"}, ["mode must be streaming"]),
    ({"score_dtype": "float16"}, ["score_dtype must be one of float32, bfloat16"]),
    ({"rho_video": 0.7, "compression": {"rho_video": 0.5}}, ["rho_video is set twice"]),
    ({"compression": "rho_video=0.7"}, ["compression must be a mapping"]),
])
def test_bad_keys_and_values_are_one_line_errors_naming_the_key(values, needles):
    with pytest.raises(ValueError) as info:
        config_from_mapping(values)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("override,needle", [
    ("knn_k=0", "knn_k must be in [1, 1024]"),
    ("scope=all", "stream_audio_scope must be one of"),
    ("compression.nope=1", "unknown compression key(s)"),
    ("saliency=global", "a stream can only use saliency=block"),
])
def test_cli_errors_are_one_line_before_loading(capsys, monkeypatch, override, needle):
    import omnizip.adapters.loading as loading

    monkeypatch.setattr(loading, "load_adapter", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["stream", "--no-interactive", "--duration", "2", override]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("note:")]
    assert len(err) == 1 and needle in err[0]


def test_a_setting_that_does_nothing_for_the_method_is_refused(capsys, monkeypatch):
    import omnizip.adapters.loading as loading

    monkeypatch.setattr(loading, "load_adapter", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["stream", "--no-interactive", "method=random", "horizon=5"]) == 2
    assert "horizon=5 does nothing for method 'random' (it applies to omnizip)" in capsys.readouterr().err


def test_a_stream_refuses_global_saliency_on_the_engine(adapter25):
    with pytest.raises(StreamConfigError, match="a stream can only use saliency=block"):
        StreamEngine(adapter25, StreamConfig().replace(saliency="global"))


# ------------------------------------------------------------------ window_s from the model


@pytest.mark.parametrize("family,expected_s", [("tiny25", 2.0), ("tiny3", 8.0)])
def test_window_s_none_is_the_models_exact_window(request, family, expected_s):
    adapter = make_adapter(request.getfixturevalue(family))
    assert StreamConfig().window_s is None
    assert StreamConfig().for_model(adapter.spec).window_s == adapter.spec.exact_window_s == expected_s
    assert StreamEngine(adapter, StreamConfig()).config.window_s == expected_s
    assert StreamConfig(window_s=4.0).for_model(adapter.spec).window_s == 4.0  # an explicit length stays


async def test_a_qwen3_session_gets_8_s_windows_once_started(tiny3):
    cfg = config_from_mapping({"model": "tiny-qwen3", "max_new_tokens": 4, "max_question_tokens": 32})
    session = StreamSession.from_config(cfg, adapter=make_adapter(tiny3, video_max_pixels=56 * 56))
    async with session:
        assert session.config.window_s == 8.0 and session.engine is not None
        assert session.engine.config.window_s == 8.0


def test_an_explicit_window_that_is_not_whole_model_chunks_is_refused(adapter25):
    with pytest.raises(StreamConfigError, match=r"window_s=3 is not a whole number of qwen2_5_omni's 2-s chunks "
                                                r"\(leave window_s unset for the model's 2-s window\)"):
        StreamEngine(adapter25, StreamConfig(window_s=3.0))
