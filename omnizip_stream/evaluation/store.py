"""Results on disk: one JSON line per (benchmark, item, method, retention, path), appended as they finish.

``results.jsonl`` in the output folder is the run's only state. A re-run reads it and skips every key
already there, so an interrupted sweep resumes where it stopped; the last record of a key wins (a
``--retry-errors`` re-run appends fresh records for failed keys). A last line cut short by a crash is
removed with a warning; damage anywhere else is an error naming the line.

``config.json`` records the settings that change answers (model, answer length, frame cap, pixel
budget ...). Adding results produced with different settings to the same folder is refused.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)

RESULTS = "results.jsonl"
CONFIG = "config.json"
Key = tuple[str, str, str, str, str]


class StoreError(ValueError):
    """The output folder holds damaged results or results of different settings (one line)."""


def record_key(record: dict[str, Any]) -> Key:
    """``(benchmark, item_id, method, retention, path)`` of a result record."""
    return (str(record["benchmark"]), str(record["item_id"]), str(record["method"]), str(record["retention"]),
            str(record["path"]))


class ResultStore:
    """Append-only JSONL results in ``out_dir`` (created when missing).

    Args:
        out_dir: the output folder.
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = os.fspath(out_dir)
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise StoreError(f"--out {self.out_dir} exists and is not a folder")
        os.makedirs(self.out_dir, exist_ok=True)
        self.path = os.path.join(self.out_dir, RESULTS)

    def load(self) -> dict[Key, dict[str, Any]]:
        """Every stored record by key (the last one of a key wins).

        A last line cut short by an interrupted run is removed from the file (with a warning), so the
        next appended record starts on a line of its own.

        Raises:
            StoreError: a damaged line other than a cut-short last line.
        """
        if not os.path.isfile(self.path):
            return {}
        with open(self.path, "rb") as fh:
            data = fh.read()
        records: dict[Key, dict[str, Any]] = {}
        lines = data.split(b"\n")
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        offset = 0
        for i, line in enumerate(lines):
            start, offset = offset, offset + len(line) + 1
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
                key = record_key(record)
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                if i == last:
                    logger.warning("%s:%d: removing a cut-short last line (an interrupted run)", self.path, i + 1)
                    with open(self.path, "r+b") as fh:
                        fh.truncate(start)
                    continue
                raise StoreError(f"{self.path}:{i + 1}: damaged result line; fix or delete it") from None
            records[key] = record
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Append one record and flush it to disk (a crash loses at most the item in flight)."""
        record_key(record)  # validates the key fields
        line = json.dumps(record, ensure_ascii=False, sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> list[dict[str, Any]]:
        """The current record of every key, in file order of first appearance."""
        return list(self.load().values())

    def check_config(self, config: dict[str, Any], compare: Iterable[str]) -> None:
        """Write ``config.json``; when results exist, first check the stored one matches on the ``compare`` keys.

        Raises:
            StoreError: the folder holds results produced with other settings.
        """
        path = os.path.join(self.out_dir, CONFIG)
        has_results = os.path.isfile(self.path) and os.path.getsize(self.path) > 0
        if os.path.isfile(path) and has_results:  # without results, an earlier failed start is simply replaced
            try:
                with open(path, encoding="utf-8") as fh:
                    old = json.load(fh)
            except (OSError, json.JSONDecodeError):
                raise StoreError(f"{path} is damaged; delete it or use another --out") from None
            for key in compare:
                if key in old and old[key] != config.get(key):
                    raise StoreError(
                        f"--out {self.out_dir} holds results made with {key}={old[key]!r} (now {config.get(key)!r}); "
                        f"use the same settings to resume, or another --out"
                    )
            merged = {**old, **config}
        else:
            merged = dict(config)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(merged, fh, indent=2, sort_keys=True)
        os.replace(tmp, path)
