"""The multiple-choice item every benchmark loader produces, and the helpers the loaders share.

Loaders turn a benchmark's published annotation file into :class:`EvalItem` objects. Everything a
loader rejects raises :class:`AnnotationError` whose message is one line naming the file and the
line (or row) of the offending entry, so a user can fix the file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# "A. text", "A) text", "(A) text", "A: text", "[A] text"
_OPTION_PREFIX = re.compile(r"^\s*(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Za-z])[.):])\s*")
# "A", "(A)", "A.", "A)", "[A]", "A. text" as the recorded answer
_ANSWER_LETTER = re.compile(r"^\s*(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Za-z]))(?:[.):]\s*.*)?\s*$", re.DOTALL)


class AnnotationError(ValueError):
    """A malformed annotation file or entry; the message is one line naming the file and line/row."""


@dataclass(frozen=True)
class EvalItem:
    """One multiple-choice question about one media file.

    Attributes:
        benchmark: benchmark name (``worldsense``, ``avut``, ``videomme``, ``shortvid``, or a JSONL file's stem).
        item_id: identifier unique within the benchmark (the resume key).
        video: path of the media file (it may not exist: the run records a media error).
        question: the question text.
        options: the option texts, without letter prefixes; option ``i`` has letter ``LETTERS[i]``.
        answer: the correct letter (``A`` ...).
        task: sub-task / category used for the per-task accuracy (``all`` when the format has none).
        source: ``file:line`` (or ``file:row N``) of the entry, for messages.
        meta: further fields kept for the result records (domain, duration ...).
    """

    benchmark: str
    item_id: str
    video: str
    question: str
    options: tuple[str, ...]
    answer: str
    task: str = "all"
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def letters(self) -> str:
        """The valid option letters, ``A`` .. one per option."""
        return LETTERS[: len(self.options)]


def where(path: str | os.PathLike[str], line: int | None = None, row: int | None = None) -> str:
    """``file:line`` / ``file: row N`` for messages."""
    name = os.fspath(path)
    if line is not None:
        return f"{name}:{line}"
    if row is not None:
        return f"{name}: row {row}"
    return name


def require(entry: Any, keys: Sequence[str], at: str, what: str = "entry") -> None:
    """Raise :class:`AnnotationError` unless ``entry`` is a dict holding every key in ``keys``."""
    if not isinstance(entry, dict):
        raise AnnotationError(f"{at}: {what} must be a JSON object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry or entry[k] is None]
    if missing:
        raise AnnotationError(f"{at}: {what} is missing field(s) {', '.join(repr(k) for k in missing)}")


def text_field(entry: dict[str, Any], key: str, at: str) -> str:
    """A non-empty string field (numbers are accepted and converted, as some ids are numeric)."""
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise AnnotationError(f"{at}: field {key!r} must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise AnnotationError(f"{at}: field {key!r} is empty")
    return text


def normalise_options(raw: Any, at: str, key: str = "options") -> tuple[str, ...]:
    """Option texts without their letter prefixes.

    ``["A. cat", "B. dog"]`` and ``["cat", "dog"]`` both give ``("cat", "dog")``. Prefixes are removed
    only when every option carries the letter of its position, so an option that merely starts with
    "A." (``"A. Lincoln"`` among unprefixed options) keeps its text.

    Raises:
        AnnotationError: not a list of 2 to 26 non-empty strings.
    """
    if not isinstance(raw, (list, tuple)):
        raise AnnotationError(f"{at}: field {key!r} must be a list of option strings, got {type(raw).__name__}")
    if not 2 <= len(raw) <= len(LETTERS):
        raise AnnotationError(f"{at}: field {key!r} must hold 2 to {len(LETTERS)} options, got {len(raw)}")
    texts = []
    for i, opt in enumerate(raw):
        if not isinstance(opt, (str, int, float)) or isinstance(opt, bool) or not str(opt).strip():
            raise AnnotationError(f"{at}: option {i + 1} of {key!r} must be a non-empty string")
        texts.append(str(opt).strip())
    prefixes = [_OPTION_PREFIX.match(t) for t in texts]
    if all(m is not None and _letter(m).upper() == LETTERS[i] for i, m in enumerate(prefixes)):
        texts = [t[m.end():].strip() or t for t, m in zip(texts, prefixes, strict=True) if m is not None]
    return tuple(texts)


def _letter(match: re.Match[str]) -> str:
    return next(g for g in match.groups() if g)


def normalise_answer(raw: Any, options: Sequence[str], at: str, key: str = "answer") -> str:
    """The correct letter from a recorded answer: ``"B"``, ``"b"``, ``"(B)"``, ``"B. dog"`` or the option text.

    Raises:
        AnnotationError: empty, or a letter / text that names none of the options.
    """
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise AnnotationError(f"{at}: field {key!r} must be an option letter, got {type(raw).__name__}")
    text = str(raw).strip()
    if not text:
        raise AnnotationError(f"{at}: field {key!r} is empty")
    letters = LETTERS[: len(options)]
    match = _ANSWER_LETTER.match(text)
    if match is not None:
        letter = _letter(match).upper()
        if letter in letters:
            return letter
    folded = [o.casefold() for o in options]
    if text.casefold() in folded:
        return letters[folded.index(text.casefold())]
    raise AnnotationError(
        f"{at}: {key} {text!r} is not one of the option letters {', '.join(letters)} nor an option text"
    )


def resolve_media(root: str, candidates: Sequence[str]) -> str:
    """The first of ``candidates`` (relative to ``root`` unless absolute) that exists, else the first one.

    A missing file is not an error here: the run records it as a media error for that item.
    """
    paths = [c if os.path.isabs(c) else os.path.join(root, c) for c in candidates]
    for p in paths:
        if os.path.isfile(p):
            return p
    return paths[0]


def read_json(path: str) -> tuple[str, Any]:
    """The text and parsed value of a JSON file.

    Raises:
        AnnotationError: missing/unreadable file or invalid JSON (with the line of the syntax error).
    """
    text = read_text(path)
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{where(path, exc.lineno)}: invalid JSON: {exc.msg}") from None


def read_text(path: str) -> str:
    """UTF-8 text of ``path``; a missing or unreadable file is an :class:`AnnotationError`."""
    if not os.path.isfile(path):
        raise AnnotationError(f"annotation file {path} does not exist")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"cannot read annotation file {path}: {exc}") from None


def top_level_entries(text: str, value: Any) -> Iterator[tuple[int, str | int, Any]]:
    """``(line, key_or_index, entry)`` of each element of a top-level JSON array or object.

    ``json`` does not report positions, so the text is re-scanned element by element with
    :meth:`json.JSONDecoder.raw_decode` to find the line each entry starts on (1-based).
    """
    decoder = json.JSONDecoder()
    ws = re.compile(r"[\s,:]*")
    pos = text.index("[" if isinstance(value, list) else "{") + 1
    if isinstance(value, list):
        for i in range(len(value)):
            pos = ws.match(text, pos).end()  # type: ignore[union-attr]
            entry, end = decoder.raw_decode(text, pos)
            yield text.count("\n", 0, pos) + 1, i, entry
            pos = end
        return
    for _ in range(len(value)):
        pos = ws.match(text, pos).end()  # type: ignore[union-attr]
        key, end = decoder.raw_decode(text, pos)
        line = text.count("\n", 0, pos) + 1
        pos = ws.match(text, end).end()  # type: ignore[union-attr]
        entry, pos = decoder.raw_decode(text, pos)
        yield line, key, entry


def check_unique(items: Sequence[EvalItem]) -> None:
    """Raise :class:`AnnotationError` when two items share an id (ids are the resume keys)."""
    seen: dict[str, str] = {}
    for item in items:
        if item.item_id in seen:
            raise AnnotationError(
                f"{item.source}: duplicate id {item.item_id!r} (first at {seen[item.item_id]}); ids must be unique"
            )
        seen[item.item_id] = item.source
