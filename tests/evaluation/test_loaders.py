"""Benchmark loaders: miniatures of each published annotation format, the generic JSONL, clear rejections."""

from __future__ import annotations

import json
import os

import pytest

from omnizip_stream.evaluation import AnnotationError, load_benchmark

from .conftest import write_jsonl


def _one_line_error(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


# ---------------------------------------------------------------- generic JSONL
def test_jsonl_parses_options_answers_and_relative_videos(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"x")
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"id": "q1", "video": "clips/a.mp4", "question": "Q1?", "options": ["cat", "dog"], "answer": "B", "task": "t"},
        "",
        {"id": 7, "video": "clips/b.mp4", "question": "Q2?", "options": ["A. cat", "B. dog", "C. cow"], "answer": "cow"},
        {"id": "q3", "video": "/abs/c.mp4", "question": "Q3?", "options": ["(A) x", "(B) y"], "answer": "(a)"},
    ])
    items = load_benchmark(f"jsonl:{path}")
    assert [i.item_id for i in items] == ["q1", "7", "q3"]
    assert all(i.benchmark == "mine" for i in items)
    assert items[0].video == str(tmp_path / "clips" / "a.mp4") and items[0].task == "t" and items[0].answer == "B"
    assert items[1].options == ("cat", "dog", "cow") and items[1].answer == "C" and items[1].task == "all"
    assert items[1].video == str(tmp_path / "clips" / "b.mp4")  # missing media is a run-time error, not a load error
    assert items[2].options == ("x", "y") and items[2].answer == "A" and items[2].video == "/abs/c.mp4"
    assert items[0].source.endswith("mine.jsonl:1") and items[1].source.endswith("mine.jsonl:3")


def test_jsonl_video_paths_relative_to_data_root(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"id": "q1", "video": "a.mp4", "question": "Q?", "options": ["x", "y"], "answer": "A"}])
    items = load_benchmark(f"jsonl:{path}", data_root="/data/root")
    assert items[0].video == "/data/root/a.mp4"


def test_prefix_only_stripped_when_every_option_has_its_letter(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"id": "q1", "video": "a.mp4", "question": "Who?", "options": ["A. Lincoln", "George Washington"],
         "answer": "A"}])
    assert load_benchmark(f"jsonl:{path}")[0].options == ("A. Lincoln", "George Washington")


@pytest.mark.parametrize("row,needles", [
    ({"id": "q", "video": "a.mp4", "question": "Q?", "options": ["x", "y"]}, ["q.jsonl:2", "'answer'"]),
    ({"id": "q", "video": "a.mp4", "question": "Q?", "options": ["x", "y"], "answer": "A", "extra": 1},
     ["q.jsonl:2", "unknown field", "'extra'"]),
    ({"id": "q", "video": "a.mp4", "question": "Q?", "options": ["x", "y"], "answer": "C"},
     ["q.jsonl:2", "'C'", "A, B"]),
    ({"id": "q", "video": "a.mp4", "question": "Q?", "options": "x,y", "answer": "A"}, ["q.jsonl:2", "list"]),
    ({"id": "q", "video": "a.mp4", "question": "Q?", "options": ["x"], "answer": "A"}, ["q.jsonl:2", "2 to 26"]),
    ({"id": "q", "video": "a.mp4", "question": "", "options": ["x", "y"], "answer": "A"}, ["q.jsonl:2", "empty"]),
    ({"id": "q", "video": "a.mp4", "question": "Q?", "options": ["x", "y"], "answer": True}, ["q.jsonl:2"]),
    ("{not json", ["q.jsonl:2", "invalid JSON"]),
    ("[1, 2]", ["q.jsonl:2", "JSON object"]),
    ({"id": "ok", "video": "a.mp4", "question": "Q?", "options": ["x", "y"], "answer": "A"},
     ["q.jsonl:2", "duplicate id 'ok'", "q.jsonl:1"]),
])
def test_jsonl_rejects_malformed_lines_naming_file_and_line(tmp_path, row, needles):
    good = {"id": "ok", "video": "a.mp4", "question": "Q?", "options": ["x", "y"], "answer": "A"}
    path = write_jsonl(tmp_path / "q.jsonl", [good, row])
    with pytest.raises(AnnotationError) as excinfo:
        load_benchmark(f"jsonl:{path}")
    _one_line_error(excinfo, *needles)


@pytest.mark.parametrize("spec,root,needles", [
    ("jsonl:", None, ["jsonl: needs a file"]),
    ("nosuch", "/tmp", ["unknown benchmark 'nosuch'", "worldsense"]),
    ("avut", None, ["--data-root is required"]),
    ("avut", "/definitely/not/here", ["is not a folder"]),
])
def test_bad_benchmark_specs(spec, root, needles):
    with pytest.raises(AnnotationError) as excinfo:
        load_benchmark(spec, root)
    _one_line_error(excinfo, *needles)


def test_missing_and_empty_annotation_files(tmp_path):
    with pytest.raises(AnnotationError) as excinfo:
        load_benchmark(f"jsonl:{tmp_path / 'none.jsonl'}")
    _one_line_error(excinfo, "does not exist")
    with pytest.raises(AnnotationError) as excinfo:
        load_benchmark("shortvid", str(tmp_path))
    _one_line_error(excinfo, "no annotation file", "ShortVid-Bench-1k.json")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(AnnotationError) as excinfo:
        load_benchmark(f"jsonl:{tmp_path / 'empty.jsonl'}")
    _one_line_error(excinfo, "no questions")


# ---------------------------------------------------------------- WorldSense
def _worldsense(root, tasks_of_second=None):
    data = {
        "vidA": {"video_id": "vidA", "domain": "Sports", "duration": "30s", "video_caption": "...",
                 "task0": {"question": "Who wins?", "candidates": ["A. red", "B. blue", "C. green", "D. none"],
                           "answer": "B", "task_type": "Event Recognition", "task_domain": "Recognition"},
                 "task1": {"question": "What sound?", "candidates": ["A. bell", "B. horn", "C. drum", "D. none"],
                           "answer": "C", "task_type": "Audio Recognition", "task_domain": "Recognition"}},
        "vidB": {"video_id": "vidB", "domain": "Music",
                 **(tasks_of_second or {"task0": {"question": "Which instrument?",
                                                  "candidates": ["A. piano", "B. violin"], "answer": "A"}})},
    }
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    open(os.path.join(root, "videos", "vidA.mp4"), "wb").close()
    with open(os.path.join(root, "worldsense_qa.json"), "w") as fh:
        json.dump(data, fh, indent=2)


def test_worldsense_one_item_per_task(tmp_path):
    _worldsense(str(tmp_path))
    items = load_benchmark("worldsense", str(tmp_path))
    assert [i.item_id for i in items] == ["vidA/task0", "vidA/task1", "vidB/task0"]
    assert [i.answer for i in items] == ["B", "C", "A"]
    assert items[0].options == ("red", "blue", "green", "none")
    assert [i.task for i in items] == ["Sports", "Sports", "Music"]
    assert items[0].video == str(tmp_path / "videos" / "vidA.mp4")
    assert items[1].meta["task_type"] == "Audio Recognition"


def test_worldsense_malformed_task_names_line_and_task(tmp_path):
    _worldsense(str(tmp_path), {"task0": {"question": "Q?", "answer": "A"}})
    with pytest.raises(AnnotationError) as excinfo:
        load_benchmark("worldsense", str(tmp_path))
    text = (tmp_path / "worldsense_qa.json").read_text().splitlines()
    line = next(i for i, t in enumerate(text, 1) if t.strip().startswith('"vidB"'))
    _one_line_error(excinfo, f"worldsense_qa.json:{line}", "(task0)", "'candidates'")


# ---------------------------------------------------------------- AVUT
def _avut_entry(**over):
    entry = {"video_id": "v1", "QA_id": "1", "video_path": "data/v1.mp4", "question": "What is said?",
             "option_A": "hello", "option_B": "bye", "option_C": "thanks", "option_D": "sorry", "answer": "C",
             "task_type": "Information Extraction"}
    entry.update(over)
    return entry


def test_avut_options_answer_and_flat_video_layout(tmp_path):
    (tmp_path / "v1.mp4").write_bytes(b"x")
    data = [_avut_entry(), _avut_entry(QA_id="2", option_E="maybe", answer="e", task_type="Counting")]
    (tmp_path / "AV_Human_data.json").write_text(json.dumps(data, indent=1))
    items = load_benchmark("avut", str(tmp_path))
    assert [i.item_id for i in items] == ["1", "2"]
    assert items[0].options == ("hello", "bye", "thanks", "sorry") and items[0].answer == "C"
    assert len(items[1].options) == 5 and items[1].answer == "E" and items[1].task == "Counting"
    assert items[0].video == str(tmp_path / "v1.mp4")  # "data/" stripped: the HF repo is flat


@pytest.mark.parametrize("over,needle", [
    ({"option_B": None}, "option_A and option_B"),
    ({"answer": "F"}, "'F'"),
    ({"video_path": None}, "'video_path'"),
])
def test_avut_rejects_malformed_entries(tmp_path, over, needle):
    (tmp_path / "AV_Human_data.json").write_text(json.dumps([_avut_entry(), _avut_entry(QA_id="2", **over)], indent=1))
    with pytest.raises(AnnotationError) as excinfo:
        load_benchmark("avut", str(tmp_path))
    text = (tmp_path / "AV_Human_data.json").read_text().splitlines()
    second = [i for i, t in enumerate(text, 1) if t.strip() == "{"][1]
    _one_line_error(excinfo, f"AV_Human_data.json:{second}", needle)


def test_avut_top_level_must_be_a_list(tmp_path):
    (tmp_path / "AV_Human_data.json").write_text("{}")
    with pytest.raises(AnnotationError) as excinfo:
        load_benchmark("avut", str(tmp_path))
    _one_line_error(excinfo, "expected an array")


# ---------------------------------------------------------------- VideoMME
def _videomme_rows():
    return [
        {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
         "url": "https://example.invalid/x", "videoID": "abc", "question_id": "001-1", "task_type": "Counting Problem",
         "question": "How many?", "options": ["A. 1.", "B. 2.", "C. 3.", "D. 4."], "answer": "B"},
        {"video_id": "002", "duration": "long", "domain": "Sports", "sub_category": "x", "url": "",
         "videoID": "def", "question_id": "002-1", "task_type": "OCR Problems",
         "question": "What text?", "options": ["A. yes", "B. no", "C. maybe", "D. never"], "answer": "D"},
    ]


@pytest.mark.parametrize("name", ["videomme.json", "videomme.jsonl"])
def test_videomme_json_and_jsonl_exports(tmp_path, name):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "def.mkv").write_bytes(b"x")
    rows = _videomme_rows()
    if name.endswith(".jsonl"):
        write_jsonl(tmp_path / name, rows)
    else:
        (tmp_path / name).write_text(json.dumps(rows, indent=1))
    items = load_benchmark("videomme", str(tmp_path))
    assert [i.item_id for i in items] == ["001-1", "002-1"]
    assert [i.task for i in items] == ["short", "long"]
    assert items[0].options == ("1.", "2.", "3.", "4.") and items[0].answer == "B"
    assert items[0].video == str(tmp_path / "data" / "abc.mp4")  # missing: first candidate kept
    assert items[1].video == str(tmp_path / "data" / "def.mkv")  # the existing variant is found


def test_videomme_missing_field_names_the_line(tmp_path):
    rows = _videomme_rows()
    del rows[1]["videoID"]
    write_jsonl(tmp_path / "videomme.jsonl", rows)
    with pytest.raises(AnnotationError) as excinfo:
        load_benchmark("videomme", str(tmp_path))
    _one_line_error(excinfo, "videomme.jsonl:2", "'videoID'")


def test_videomme_parquet_without_pyarrow_says_what_to_do(tmp_path):
    try:
        import pyarrow  # noqa: F401
        pytest.skip("pyarrow is installed here; the missing-pyarrow message cannot be shown")
    except ImportError:
        pass
    (tmp_path / "videomme").mkdir()
    (tmp_path / "videomme" / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    with pytest.raises(AnnotationError) as excinfo:
        load_benchmark("videomme", str(tmp_path))
    _one_line_error(excinfo, "pyarrow", "--annotation")


# ---------------------------------------------------------------- ShortVid-Bench
def test_shortvid_candidates_and_videos_folder(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "x1.mp4").write_bytes(b"x")
    data = [{"video": "x1.mp4", "question": "Why?", "candidates": ["A. a", "B. b", "C. c", "D. d"], "answer": "D",
             "problem_type": "Creator Intent", "data_type": "Video"},
            {"video": "x1.mp4", "question": "When?", "candidates": ["A. now", "B. later"], "answer": "A"}]
    (tmp_path / "ShortVid-Bench-1k.json").write_text(json.dumps(data, indent=1))
    items = load_benchmark("shortvid", str(tmp_path))
    assert [i.item_id for i in items] == ["x1#0", "x1#1"]
    assert items[0].answer == "D" and items[0].task == "Creator Intent" and items[1].task == "all"
    assert items[0].video == str(tmp_path / "videos" / "x1.mp4")


def test_shortvid_invalid_json_names_the_line(tmp_path):
    (tmp_path / "ShortVid-Bench-1k.json").write_text('[\n  {"video": "a.mp4",\n  "question": }\n]')
    with pytest.raises(AnnotationError) as excinfo:
        load_benchmark("shortvid", str(tmp_path))
    _one_line_error(excinfo, "ShortVid-Bench-1k.json:3", "invalid JSON")


def test_annotation_override(tmp_path):
    (tmp_path / "AV_Gemini_data.json").write_text(json.dumps([_avut_entry()]))
    items = load_benchmark("avut", str(tmp_path), annotation=str(tmp_path / "AV_Gemini_data.json"))
    assert len(items) == 1 and items[0].benchmark == "avut"
