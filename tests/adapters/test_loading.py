"""Loading thinkers from checkpoint folders (composite and thinker-only), and the errors users see."""

from __future__ import annotations

import pytest
import torch

from omnizip.adapters.base import ModelLoadError
from omnizip.adapters.loading import load_adapter


def _save_composite(bundle, path, composite_cls: str, config_cls: str) -> None:
    import transformers

    config = getattr(transformers, config_cls)(thinker_config=bundle.config.to_dict(), enable_audio_output=False)
    model = getattr(transformers, composite_cls)(config)
    model.thinker.load_state_dict(bundle.thinker.state_dict())
    model.save_pretrained(path)
    bundle.tokenizer.save_pretrained(path)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loads_the_thinker_of_a_full_qwen2_5_omni_checkpoint(tiny25, tmp_path):
    _save_composite(tiny25, tmp_path, "Qwen2_5OmniForConditionalGeneration", "Qwen2_5OmniConfig")
    adapter = load_adapter(str(tmp_path), device="cpu", dtype="float32")
    assert adapter.spec.family == "qwen2_5_omni"
    assert _same_weights(adapter.thinker, tiny25.thinker)
    assert adapter.tokenizer.convert_tokens_to_ids("<|AUDIO|>") == tiny25.config.audio_token_id


def test_loads_a_thinker_only_folder_in_bfloat16(tiny25, tmp_path):
    tiny25.thinker.save_pretrained(tmp_path)
    tiny25.tokenizer.save_pretrained(tmp_path)
    adapter = load_adapter(str(tmp_path), device="cpu", dtype="bfloat16", attn="eager")
    assert adapter.dtype == torch.bfloat16
    assert next(adapter.thinker.parameters()).dtype == torch.bfloat16


def test_loads_the_thinker_of_a_full_qwen3_omni_checkpoint(tiny3, tmp_path):
    _save_composite(tiny3, tmp_path, "Qwen3OmniMoeForConditionalGeneration", "Qwen3OmniMoeConfig")
    adapter = load_adapter(str(tmp_path), device="cpu", dtype="float32")
    assert adapter.spec.family == "qwen3_omni"
    assert _same_weights(adapter.thinker, tiny3.thinker)


@pytest.mark.parametrize("model,kwargs,message", [
    ("Qwen/Qwen2.5-Omni-7B", {}, "huggingface-cli download Qwen/Qwen2.5-Omni-7B"),
    ("/no/such/folder", {}, "cannot load model"),
    ("tiny", {"dtype": "float8"}, "unknown dtype"),
    ("tiny", {"attn": "magic"}, "unknown attention backend"),
    ("tiny", {"device": "cuda:3"} if not torch.cuda.is_available() else {"device": "nope"}, ""),
])
def test_load_errors_are_actionable(model, kwargs, message):
    with pytest.raises((ModelLoadError, RuntimeError)) as err:
        load_adapter(model, **kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_file_is_not_a_checkpoint(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_adapter(str(f))


def test_a_folder_of_another_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError, match="bert"):
        load_adapter(str(tmp_path))


# ------------------------------------------------------------------ hub ids: local cache only, fail fast


def test_a_hub_id_not_in_the_cache_fails_at_once(monkeypatch, tmp_path):
    """Offline, today's loader spent ~27 s in hub retries; the cache is checked first, without the network."""
    import time

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # any network use would hang or fail slowly
    load_adapter("tiny")  # imports warmed up
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        load_adapter("Qwen/Qwen2.5-Omni-7B", device="cpu")
    assert time.perf_counter() - t0 < 3.0
    msg = str(err.value)
    assert "not in the local Hugging Face cache" in msg and str(tmp_path / "empty-cache") in msg
    assert "huggingface-cli download Qwen/Qwen2.5-Omni-7B --local-dir ./Qwen2.5-Omni-7B" in msg


def test_a_cached_hub_id_loads_from_its_snapshot_offline(monkeypatch, tmp_path, tiny25):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someorg--tiny-omni"
    snapshot = repo / "snapshots" / commit
    tiny25.thinker.save_pretrained(snapshot)
    tiny25.tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    adapter = load_adapter("someorg/tiny-omni", device="cpu", dtype="float32")
    assert _same_weights(adapter.thinker, tiny25.thinker)


def test_a_folder_without_config_gets_advice_that_fits(tmp_path):
    empty = tmp_path / "Qwen2.5-Omni-7B"
    empty.mkdir()
    with pytest.raises(ModelLoadError) as err:
        load_adapter(str(empty))
    msg = str(err.value)
    assert "has no config.json" in msg and f"--local-dir {empty}`" in msg
    assert f"download {empty}" not in msg  # not the folder as a hub id (today's advice)
    (tmp_path / "parent" / "ckpt").mkdir(parents=True)
    (tmp_path / "parent" / "ckpt" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="pass --model .*parent/ckpt"):
        load_adapter(str(tmp_path / "parent"))


@pytest.mark.parametrize("model,message", [
    ("./Qwen2.5-Omni-3B", "no such folder; create it with `huggingface-cli download Qwen/Qwen2.5-Omni-3B "
                          "--local-dir ./Qwen2.5-Omni-3B`"),
    ("not a model", "not a hub id"),
])
def test_missing_paths_and_nonsense(model, message):
    with pytest.raises(ModelLoadError) as err:
        load_adapter(model)
    assert message in str(err.value)
