"""``-lbyl`` method names (listen before you look) in the eval sweep and the benchmark modes."""

from __future__ import annotations

import pytest

from omnizip.registry import available
from omnizip_stream.bench.modes import MODES_BY_NAME, parse_modes
from omnizip_stream.cli import main
from omnizip_stream.evaluation.settings import build_settings, pinned_method


def test_eval_method_names_pin_their_retention() -> None:
    assert pinned_method("omnizip-35-lbyl") == ("omnizip-lbyl", "0.35")
    assert pinned_method("omnizip-45-lbyl") == ("omnizip-lbyl", "0.45")
    assert pinned_method("omnizip-lbyl") is None
    settings = build_settings(["full", "omnizip", "omnizip-35-lbyl"], ["0.45"], available())
    assert [s.label for s in settings] == ["full", "omnizip@0.45", "omnizip-lbyl@0.35"]
    assert settings[-1].rho_audio == 0.4 and settings[-1].rho_video == 0.7
    only = build_settings(["omnizip-35-lbyl", "omnizip-45-lbyl"], [], available())
    assert [s.label for s in only] == ["omnizip-lbyl@0.35", "omnizip-lbyl@0.45"]
    assert [s.label for s in build_settings(["omnizip-lbyl"], ["0.35"], available())] == ["omnizip-lbyl@0.35"]
    with pytest.raises(ValueError, match="unknown method 'omnizip-25-lbyl'"):
        build_settings(["omnizip-25-lbyl"], [], available())
    with pytest.raises(ValueError, match="twice"):
        build_settings(["omnizip-35-lbyl", "omnizip-lbyl"], ["0.35"], available())


def test_offline_eval_refuses_lbyl_in_one_line(capsys, tmp_path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"id": "a", "video": "a.mp4", "question": "Q?", "options": ["x", "y"], "answer": "A"}\n')
    code = main(["eval", "--model", "tiny", "--benchmark", f"jsonl:{questions}", "--out", str(tmp_path / "o"),
                 "--methods", "omnizip-35-lbyl"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--path streaming" in err and "Traceback" not in err


def test_bench_modes_have_the_lbyl_twins() -> None:
    for budget, rho_video in (("35", 0.7), ("45", 0.6)):
        mode = MODES_BY_NAME[f"omnizip-{budget}-lbyl"]
        assert mode.kind == "streaming" and mode.method == "omnizip-lbyl" and mode.rho_video == rho_video
        assert mode.budget == budget
    assert [m.name for m in parse_modes("full,omnizip-35,omnizip-35-lbyl")] == ["full", "omnizip-35",
                                                                                 "omnizip-35-lbyl"]
