"""Loaders for the paper's benchmarks (published annotation formats) and a generic JSONL format.

Expected layouts under ``--data-root DIR`` (the folders as the datasets are published):

WorldSense (``honglyhly/WorldSense``; the paper's Table 2)::

    DIR/worldsense_qa.json        {"<video_id>": {"video_id", "domain", ..., "task0": {...}, "task1": {...}}}
    DIR/videos/<video_id>.mp4     each taskN: {"question", "candidates": ["A. ...", ...], "answer": "B",
                                               "task_type", "task_domain"}
    one item per (video, taskN), id "<video_id>/<taskN>"; per-task accuracy by the video's "domain".

AVUT (``tsinghua-ee/AVUTBenchmark``, the human-annotated subset used by the paper)::

    DIR/AV_Human_data.json        [{"video_id", "QA_id", "video_path": "data/<name>.mp4", "question",
                                    "option_A", "option_B", ... "option_F", "answer": "C", "task_type"}]
    DIR/<name>.mp4                (or DIR/data/<name>.mp4 or DIR/videos/<name>.mp4)
    id "QA_id" (else "<video_id>#<index>"); per-task accuracy by "task_type".

VideoMME (``lmms-lab/Video-MME``, reported without subtitles, with audio)::

    DIR/videomme/test-00000-of-00001.parquet   (needs pyarrow) or DIR/videomme.jsonl / DIR/videomme.json
                                  rows {"videoID", "question_id", "duration": "short|medium|long",
                                        "domain", "task_type", "question", "options": ["A. ...", ...],
                                        "answer": "A"}
    DIR/data/<videoID>.mp4        (or .MP4 / .mkv)
    id "question_id"; per-task accuracy by "duration".

ShortVid-Bench (``TencentARC/ShortVid-Bench``, 1k)::

    DIR/ShortVid-Bench-1k.json    [{"video": "<name>.mp4", "question", "candidates": ["A. ...", ...],
                                    "answer": "A", "problem_type", "data_type"}]
    DIR/videos/<name>.mp4         (or DIR/<video> as written)
    id "id"/"question_id" when present, else "<video stem>#<index>"; per-task by "problem_type".

Generic JSONL (``--benchmark jsonl:FILE``), one object per line::

    {"id": "q1", "video": "clips/a.mp4", "question": "...", "options": ["cat", "dog"], "answer": "B",
     "task": "optional label"}

    ``video`` is relative to ``--data-root`` (default: the JSONL file's folder); ``answer`` is a letter or
    an option's text; options may carry "A." prefixes or not. Unknown keys are rejected (typos).

``--annotation FILE`` replaces the default annotation file of a published benchmark (for instance
AVUT's ``AV_Gemini_data.json`` or a VideoMME parquet exported to JSONL).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omnizip_stream.evaluation.items import (
    LETTERS,
    AnnotationError,
    EvalItem,
    check_unique,
    normalise_answer,
    normalise_options,
    read_json,
    read_text,
    require,
    resolve_media,
    text_field,
    top_level_entries,
    where,
)

BENCHMARKS = ("worldsense", "avut", "videomme", "shortvid")
JSONL_KEYS = frozenset({"id", "video", "question", "options", "answer", "task"})


def load_benchmark(spec: str, data_root: str | None = None, annotation: str | None = None) -> list[EvalItem]:
    """Load a benchmark's items.

    Args:
        spec: ``worldsense``, ``avut``, ``videomme``, ``shortvid`` or ``jsonl:FILE``.
        data_root: the dataset folder (layouts in the module docstring); for ``jsonl`` the folder
            video paths are relative to (default: the JSONL file's folder).
        annotation: an annotation file replacing the benchmark's default one.

    Returns:
        The items in file order, ids unique.

    Raises:
        AnnotationError: unknown benchmark, missing folder/file, malformed entries (one line each).
    """
    if spec.startswith("jsonl:"):
        path = spec[len("jsonl:"):]
        if not path:
            raise AnnotationError("jsonl: needs a file, e.g. --benchmark jsonl:questions.jsonl")
        root = data_root if data_root else os.path.dirname(os.path.abspath(path))
        items = load_jsonl(path, root, name=Path(path).stem)
    else:
        loaders: dict[str, Callable[[str, str | None], list[EvalItem]]] = {
            "worldsense": load_worldsense, "avut": load_avut, "videomme": load_videomme, "shortvid": load_shortvid,
        }
        if spec not in loaders:
            raise AnnotationError(f"unknown benchmark {spec!r}; choose {', '.join(BENCHMARKS)} or jsonl:FILE")
        if not data_root:
            raise AnnotationError(f"--data-root is required for {spec} (the dataset folder)")
        if not os.path.isdir(data_root):
            raise AnnotationError(f"--data-root {data_root} is not a folder")
        items = loaders[spec](data_root, annotation)
    if not items:
        raise AnnotationError(f"{spec}: the annotation file holds no questions")
    check_unique(items)
    return items


def _annotation(root: str, annotation: str | None, defaults: list[str], name: str) -> str:
    if annotation:
        return annotation
    for rel in defaults:
        path = os.path.join(root, rel)
        if os.path.isfile(path):
            return path
    raise AnnotationError(f"{name}: no annotation file in {root} (looked for {', '.join(defaults)})")


def _top_level(path: str, kind: type) -> list[tuple[int, str | int, Any]]:
    text, value = read_json(path)
    if not isinstance(value, kind):
        want = "an array" if kind is list else "an object"
        raise AnnotationError(f"{where(path, 1)}: expected {want} at the top level, got {type(value).__name__}")
    return list(top_level_entries(text, value))


def load_worldsense(root: str, annotation: str | None = None) -> list[EvalItem]:
    """WorldSense ``worldsense_qa.json`` (layout in the module docstring)."""
    path = _annotation(root, annotation, ["worldsense_qa.json"], "worldsense")
    items: list[EvalItem] = []
    for line, key, entry in _top_level(path, dict):
        at = where(path, line)
        require(entry, [], at, f"video {key!r}")
        video_id = text_field(entry, "video_id", at) if "video_id" in entry else str(key)
        tasks = sorted((k for k in entry if k.startswith("task") and isinstance(entry[k], dict)),
                       key=lambda k: (len(k), k))
        if not tasks:
            raise AnnotationError(f"{at}: video {key!r} has no task0/task1/... questions")
        video = resolve_media(root, [f"videos/{video_id}.mp4", f"{video_id}.mp4"])
        for task_key in tasks:
            task = entry[task_key]
            tat = f"{at} ({task_key})"
            require(task, ["question", "candidates", "answer"], tat, "question")
            options = normalise_options(task["candidates"], tat, "candidates")
            items.append(EvalItem(
                benchmark="worldsense", item_id=f"{video_id}/{task_key}", video=video,
                question=text_field(task, "question", tat), options=options,
                answer=normalise_answer(task["answer"], options, tat), task=str(entry.get("domain") or "all"),
                source=tat, meta={"task_type": task.get("task_type", ""), "task_domain": task.get("task_domain", ""),
                                  "duration": entry.get("duration", "")},
            ))
    return items


def load_avut(root: str, annotation: str | None = None) -> list[EvalItem]:
    """AVUT ``AV_Human_data.json`` (layout in the module docstring)."""
    path = _annotation(root, annotation, ["AV_Human_data.json"], "avut")
    items: list[EvalItem] = []
    for line, index, entry in _top_level(path, list):
        at = where(path, line)
        require(entry, ["video_path", "question", "answer"], at)
        options = []
        for letter in LETTERS[:6]:
            value = entry.get(f"option_{letter}")
            if value is None or (isinstance(value, str) and not value.strip()):
                break
            options.append(value)
        if len(options) < 2:
            raise AnnotationError(f"{at}: entry needs at least option_A and option_B")
        opts = normalise_options(options, at, "option_A..")
        rel = text_field(entry, "video_path", at)
        stripped = rel[len("data/"):] if rel.startswith("data/") else rel
        video = resolve_media(root, [stripped, rel, os.path.join("videos", os.path.basename(rel))])
        qa_id = entry.get("QA_id")
        item_id = str(qa_id) if qa_id not in (None, "") else f"{entry.get('video_id') or Path(rel).stem}#{index}"
        items.append(EvalItem(
            benchmark="avut", item_id=item_id, video=video, question=text_field(entry, "question", at),
            options=opts, answer=normalise_answer(entry["answer"], opts, at),
            task=str(entry.get("task_type") or "all"), source=at, meta={"video_id": entry.get("video_id", "")},
        ))
    return items


def load_videomme(root: str, annotation: str | None = None) -> list[EvalItem]:
    """VideoMME rows from the published parquet, or the same rows as JSON/JSONL (layout in the module docstring)."""
    path = _annotation(root, annotation, ["videomme/test-00000-of-00001.parquet", "videomme.jsonl", "videomme.json"],
                       "videomme")
    items: list[EvalItem] = []
    for at, row in _rows(path):
        require(row, ["videoID", "question", "options", "answer"], at, "row")
        options = normalise_options(_as_list(row["options"]), at)
        video_id = text_field(row, "videoID", at)
        video = resolve_media(root, [f"data/{video_id}{ext}" for ext in (".mp4", ".MP4", ".mkv")])
        qid = row.get("question_id")
        items.append(EvalItem(
            benchmark="videomme", item_id=str(qid) if qid not in (None, "") else f"{video_id}#{len(items)}",
            video=video, question=text_field(row, "question", at), options=options,
            answer=normalise_answer(row["answer"], options, at), task=str(row.get("duration") or "all"), source=at,
            meta={"domain": row.get("domain", ""), "task_type": row.get("task_type", "")},
        ))
    return items


def _as_list(value: Any) -> Any:
    """Parquet list columns may arrive as numpy arrays; JSON ones as lists."""
    return list(value) if hasattr(value, "tolist") and not isinstance(value, (str, list)) else value


def _rows(path: str) -> list[tuple[str, Any]]:
    """``(where, row)`` of a parquet, JSONL or JSON-array file."""
    if path.endswith(".parquet"):
        if not os.path.isfile(path):
            raise AnnotationError(f"annotation file {path} does not exist")
        try:
            import pyarrow.parquet as pq  # type: ignore[import-not-found]
        except ImportError:
            raise AnnotationError(
                f"{path}: reading parquet needs pyarrow (pip install pyarrow), or export the rows to "
                f"videomme.jsonl and pass --annotation"
            ) from None
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise AnnotationError(f"{path}: cannot read parquet: {exc}") from None
        return [(where(path, row=i + 1), r) for i, r in enumerate(rows)]
    if path.endswith(".jsonl"):
        return [(where(path, line), r) for line, r in _jsonl_lines(path)]
    return [(where(path, line), r) for line, _, r in _top_level(path, list)]


def _jsonl_lines(path: str) -> list[tuple[int, Any]]:
    out = []
    for line_no, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((line_no, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise AnnotationError(f"{where(path, line_no)}: invalid JSON: {exc.msg}") from None
    return out


def load_shortvid(root: str, annotation: str | None = None) -> list[EvalItem]:
    """ShortVid-Bench ``ShortVid-Bench-1k.json`` (layout in the module docstring)."""
    path = _annotation(root, annotation, ["ShortVid-Bench-1k.json"], "shortvid")
    items: list[EvalItem] = []
    for line, index, entry in _top_level(path, list):
        at = where(path, line)
        require(entry, ["video", "question", "candidates", "answer"], at)
        options = normalise_options(entry["candidates"], at, "candidates")
        rel = text_field(entry, "video", at)
        video = resolve_media(root, [os.path.join("videos", rel), rel, os.path.join("videos", os.path.basename(rel))])
        given = entry.get("id", entry.get("question_id"))
        items.append(EvalItem(
            benchmark="shortvid", item_id=str(given) if given not in (None, "") else f"{Path(rel).stem}#{index}",
            video=video, question=text_field(entry, "question", at), options=options,
            answer=normalise_answer(entry["answer"], options, at), task=str(entry.get("problem_type") or "all"),
            source=at, meta={"data_type": entry.get("data_type", "")},
        ))
    return items


def load_jsonl(path: str, root: str, name: str = "jsonl") -> list[EvalItem]:
    """The generic format: one ``{"id", "video", "question", "options", "answer"[, "task"]}`` per line.

    Args:
        path: the JSONL file.
        root: folder relative ``video`` paths start from.
        name: benchmark name in the results and reports (the CLI uses the file's stem).
    """
    items: list[EvalItem] = []
    for line_no, entry in _jsonl_lines(path):
        at = where(path, line_no)
        require(entry, ["id", "video", "question", "options", "answer"], at)
        unknown = sorted(set(entry) - JSONL_KEYS)
        if unknown:
            raise AnnotationError(
                f"{at}: unknown field(s) {', '.join(repr(k) for k in unknown)}; allowed: {', '.join(sorted(JSONL_KEYS))}"
            )
        options = normalise_options(entry["options"], at)
        task = entry.get("task")
        items.append(EvalItem(
            benchmark=name, item_id=text_field(entry, "id", at),
            video=resolve_media(root, [text_field(entry, "video", at)]), question=text_field(entry, "question", at),
            options=options, answer=normalise_answer(entry["answer"], options, at),
            task=text_field(entry, "task", at) if task is not None else "all", source=at,
        ))
    return items
