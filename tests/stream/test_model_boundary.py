"""omnizip_stream/ asks the adapter for model facts and never knows them (issue 14).

Which position row carries time (TMRoPE) and how transformers' cache stores its layers are the
adapter's (omnizip/adapters/stream_ops.py). A line of omnizip_stream/ that reaches into a cache's
``.layers`` / ``.keys`` / ``.values`` tensors or indexes rows of position ids fails this test.
"""

from __future__ import annotations

import re
from pathlib import Path

import omnizip_stream

ROOT = Path(omnizip_stream.__file__).parent

FORBIDDEN = {
    "cache layers": re.compile(r"\.layers\b"),
    "cache keys/values tensors": re.compile(r"\.(keys|values)\b(?!\s*\()"),
    # positions[0], positions[1:, audio], kept_pos[2]: a row of [3, S] ids (a list's [-1] is not).
    "position rows": re.compile(r"\b\w*pos(itions?|_ids)?\s*\[\s*[0-2]\s*(:\s*\d*\s*)?[,\]]"),
}


def _offending_lines(text: str) -> list[tuple[int, str, str]]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0]
        for what, pattern in FORBIDDEN.items():
            if pattern.search(code):
                out.append((number, what, line.strip()))
    return out


def test_the_patterns_catch_what_used_to_be_there():
    leaked = (
        "for layer in self.cache.layers:\n"
        "    layer.keys = torch.cat([layer.keys[..., :start, :]], dim=-2)\n"
        "positions[0] -= delta\n"
        "positions[1:, audio_rows] -= delta\n"
        "first = min(float(s.positions[0].min()) for s in movable)\n"
    )
    assert len({n for n, _, _ in _offending_lines(leaked)}) == 5
    fine = "for key in report.keys():\n    total = sum(x.values())\nn = positions.shape[1]\n"
    assert _offending_lines(fine) == []


def test_omnizip_stream_never_touches_cache_layers_or_position_rows():
    hits = [f"{path.relative_to(ROOT.parent)}:{n}: {what}: {line}"
            for path in sorted(ROOT.rglob("*.py")) for n, what, line in _offending_lines(path.read_text())]
    assert not hits, "model facts belong behind the adapter (omnizip/adapters/stream_ops.py):\n" + "\n".join(hits)
