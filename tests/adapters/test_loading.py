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
