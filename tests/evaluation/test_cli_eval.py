"""``omnizip eval`` end to end: files written, resume, published-format miniature, one-line errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from omnizip_stream.cli import main

from .conftest import PIXELS, dataset_rows, write_jsonl


def _eval(capsys, *args):
    code = main(["eval", "--model", "tiny", "--video-max-pixels", str(PIXELS), "--max-new-tokens", "3", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def reuse_adapter(monkeypatch, eval_adapter):
    """Skip the 5-s tiny model build where the test is not about loading (records the load calls)."""
    import omnizip.adapters.loading as loading

    calls = []

    def fake_load(model, **kwargs):
        calls.append((model, kwargs))
        return eval_adapter

    monkeypatch.setattr(loading, "load_adapter", fake_load)
    return calls


def test_cli_offline_end_to_end_and_resume(capsys, tmp_path, clips):
    questions = write_jsonl(tmp_path / "mini.jsonl", dataset_rows(clips))
    out_dir = tmp_path / "out"
    code, out, err = _eval(capsys, "--benchmark", f"jsonl:{questions}", "--out", str(out_dir),
                           "--methods", "full,omnizip,random", "--retention", "0.45,0.35")
    assert code == 0, err
    for name in ("results.jsonl", "config.json", "summary.json", "report.md"):
        assert (out_dir / name).is_file()
    records = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4 * 5 and sum(r["status"] == "error" for r in records) == 2 * 5
    assert "## Table 1 — offline path" in out and "| full tokens | 100 % | 100.0 |" in out
    assert "RANDOM weights" in err and "accuracies above are meaningless" in err
    assert "10 answered, 10 errors, 0 already done of 20" in err
    summary = json.loads((out_dir / "summary.json").read_text())
    rows = summary["paths"]["offline"]["rows"]
    assert [r["label"] for r in rows] == ["full", "omnizip@0.45", "random@0.45", "omnizip@0.35", "random@0.35"]
    assert summary["model"] == "tiny" and summary["random_weights_notice"]
    config = json.loads((out_dir / "config.json").read_text())
    assert config["model"] == "tiny" and config["max_new_tokens"] == 3 and config["g_mini"] == 3

    code, out, err = _eval(capsys, "--benchmark", f"jsonl:{questions}", "--out", str(out_dir),
                           "--methods", "full,omnizip,random", "--retention", "0.45,0.35")
    assert code == 0 and "0 answered, 0 errors, 20 already done of 20" in err
    assert len((out_dir / "results.jsonl").read_text().splitlines()) == 20

    code, out, err = _eval(capsys, "--report-only", "--out", str(out_dir))
    assert code == 0 and "## Table 1 — offline path" in out


def test_cli_streaming_on_a_published_format(capsys, tmp_path, clips, reuse_adapter):
    root = tmp_path / "ShortVid"
    (root / "videos").mkdir(parents=True)
    shutil.copy(clips["av"], root / "videos" / "clip1.mp4")
    data = [{"video": "clip1.mp4", "question": "What is shown?", "candidates": ["A. a square", "B. a face"],
             "answer": "A", "problem_type": "Visual", "data_type": "Video"},
            {"video": "clip2.mp4", "question": "Missing clip?", "candidates": ["A. yes", "B. no"], "answer": "B"},
            {"video": "clip1.mp4", "question": "Beyond --limit", "candidates": ["A. x", "B. y"], "answer": "A"}]
    (root / "ShortVid-Bench-1k.json").write_text(json.dumps(data, indent=1))
    out_dir = tmp_path / "out"
    code, out, err = _eval(capsys, "--benchmark", "shortvid", "--data-root", str(root), "--out", str(out_dir),
                           "--methods", "full,omnizip", "--retention", "0.35", "--path", "streaming", "--limit", "2")
    assert code == 0, err
    assert len(reuse_adapter) == 1 and reuse_adapter[0][0] == "tiny"
    records = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert {(r["item_id"], r["method"], r["status"]) for r in records} == {
        ("clip1#0", "identity", "ok"), ("clip1#0", "omnizip", "ok"),
        ("clip2#1", "identity", "error"), ("clip2#1", "omnizip", "error")}
    assert all(r["path"] == "streaming" and r["benchmark"] == "shortvid" for r in records)
    assert "## Table 1 — streaming path" in out and "### shortvid (streaming) — per task" in out


def test_cli_avut_uses_g15(capsys, tmp_path, clips, reuse_adapter):
    root = tmp_path / "AVUT"
    root.mkdir()
    shutil.copy(clips["av"], root / "v1.mp4")
    entry = {"video_id": "v1", "QA_id": "7", "video_path": "data/v1.mp4", "question": "Which?",
             "option_A": "one", "option_B": "two", "answer": "B", "task_type": "Counting"}
    (root / "AV_Human_data.json").write_text(json.dumps([entry]))
    code, out, err = _eval(capsys, "--benchmark", "avut", "--data-root", str(root), "--out", str(tmp_path / "o"),
                           "--methods", "omnizip", "--retention", "0.45")
    assert code == 0, err
    assert json.loads((tmp_path / "o" / "config.json").read_text())["g_avut"] == 15


@pytest.mark.parametrize("extra,needle", [
    (["--methods", "full,magic"], "unknown method 'magic'"),
    (["--retention", "0.5"], "unknown retention '0.5'"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--max-side", "8"], "--max-side must be at least 16"),
    (["--benchmark", "avut"], "--data-root is required for avut"),
    (["--benchmark", "jsonl:/no/such/file.jsonl"], "does not exist"),
    (["--benchmark", "nope"], "unknown benchmark 'nope'"),
])
def test_cli_bad_arguments_are_one_line_errors(capsys, tmp_path, clips, extra, needle, reuse_adapter):
    questions = write_jsonl(tmp_path / "q.jsonl", dataset_rows(clips)[:1])
    args = ["--benchmark", f"jsonl:{questions}", "--out", str(tmp_path / "out"), *extra]
    code, out, err = _eval(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and needle in err and "Traceback" not in err, err
    assert reuse_adapter == []  # rejected before any model is loaded


def test_cli_malformed_annotation_and_mismatched_out(capsys, tmp_path, clips, reuse_adapter):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "x", "video": "a.mp4", "question": "Q?", "options": ["a", "b"]}])
    code, _, err = _eval(capsys, "--benchmark", f"jsonl:{bad}", "--out", str(tmp_path / "o1"))
    assert code == 2 and err.count("\n") == 1 and "bad.jsonl:1" in err and "'answer'" in err

    good = write_jsonl(tmp_path / "good.jsonl", dataset_rows(clips)[3:])  # the missing clip: no model call
    code, _, err = _eval(capsys, "--benchmark", f"jsonl:{good}", "--out", str(tmp_path / "o2"), "--methods", "full")
    assert code == 0, err
    code = main(["eval", "--model", "tiny", "--benchmark", f"jsonl:{good}", "--out", str(tmp_path / "o2"),
                 "--methods", "full", "--max-new-tokens", "8"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "max_new_tokens=3" in err

    code, _, err = _eval(capsys, "--report-only", "--out", str(tmp_path / "empty"))
    assert code == 2 and "holds no results" in err

    (tmp_path / "o2" / "results.jsonl").write_text("garbage\n" + (tmp_path / "o2" / "results.jsonl").read_text())
    code, _, err = _eval(capsys, "--benchmark", f"jsonl:{good}", "--out", str(tmp_path / "o2"), "--methods", "full")
    assert code == 2 and "results.jsonl:1: damaged" in err
    assert os.path.isfile(tmp_path / "o2" / "config.json")
