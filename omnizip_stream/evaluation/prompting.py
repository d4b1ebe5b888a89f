"""Multiple-choice prompting and answer parsing, as in the paper's evaluation setup.

The paper's scripts (OmniZip ``eval/*.py``) ask the question followed by ``Options:`` and one
``"A. text"`` line per option, end with the usual instruction to answer with the option's letter,
decode greedily, and take the first option letter of the reply. :func:`parse_answer` accepts the
shapes models actually produce (``"B"``, ``"(B)"``, ``"B."``, ``"Answer: B"``, ``"The answer is B"``,
the option's text, lowercase letters) and returns None when the reply names no option
("unanswered", counted as wrong, as the reference scripts count it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from omnizip_stream.evaluation.items import LETTERS, EvalItem

INSTRUCTION = "Answer with the option's letter from the given choices directly."
SYSTEM_SUFFIX = "Please analyze the video carefully and select the most appropriate answer from the given options."


def build_prompt(item: EvalItem) -> str:
    """The user text of ``item``: question, ``Options:``, one ``"A. text"`` line per option, the instruction."""
    lines = [item.question, "Options:"]
    lines += [f"{letter}. {text}" for letter, text in zip(LETTERS, item.options, strict=False)]
    lines.append(INSTRUCTION)
    return "\n".join(lines)


def eval_system_prompt(default: str | None) -> str:
    """The evaluation system prompt: the model's default one (if any) plus the paper's MC sentence."""
    return f"{default.strip()} {SYSTEM_SUFFIX}" if default and default.strip() else SYSTEM_SUFFIX


# A letter that stands alone: "(b)" / "[B]" in any case; "B" followed by a non-letter; a lowercase
# "b" only when followed by ")", ".", ":" or the end (so the article "a dog" is not an answer).
_TOKEN = r"(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Z])(?![A-Za-z0-9'])|([a-z])(?=[.):]|\s*$))"
_EXPLICIT = re.compile(  # case-insensitive words, case-sensitive letter token
    r"(?i:\b(?:answer|option|choice)(?:\s+(?:is|would\s+be|should\s+be))?\s*[:\-]?\s*(?:option\s+)?)\**\s*"
    + _TOKEN
)
_LEADING = re.compile(r"^[\s\"'*`>#]*" + _TOKEN)
_BRACKETED = re.compile(r"\(([A-Za-z])\)|\[([A-Za-z])\]")
_ARTICLE = re.compile(r"^[\s\"'*`]*(?:A|I)\s+[a-z]")
_NON_WORD = re.compile(r"[^0-9a-z]+")


def _group(match: re.Match[str]) -> str:
    return next(g for g in match.groups() if g).upper()


def _norm(text: str) -> str:
    return " ".join(_NON_WORD.sub(" ", text.casefold()).split())


def _by_text(reply: str, options: Sequence[str], letters: str) -> str | None:
    """The option whose text the reply is, or the only (longest) option text the reply contains."""
    said = _norm(reply)
    texts = [_norm(o) for o in options]
    for letter, text in zip(letters, texts, strict=True):
        if text and said == text:
            return letter
    padded = f" {said} "
    hits = [(len(t), letter) for letter, t in zip(letters, texts, strict=True) if t and f" {t} " in padded]
    if not hits:
        return None
    hits.sort(reverse=True)
    longest = hits[0]
    # several options contained: accept the longest only when it contains all the others ("hot dog" vs "dog")
    if all(f" {texts[letters.index(letter)]} " in f" {texts[letters.index(longest[1])]} " for _, letter in hits):
        return longest[1]
    return None


def parse_answer(reply: str, options: Sequence[str]) -> str | None:
    """The option letter a model's reply chooses, or None (unanswered).

    Order: an explicit statement (``"Answer: B"``, ``"the answer is (b)"``, ``"option C"``); a leading
    letter (``"B"``, ``"(B)"``, ``"B. dog"``, ``"b)"``); the text of one option; a single bracketed
    letter anywhere (``"I think (C)"``). A leading ``"A "`` / ``"I "`` that reads as a word
    (``"A dog barks"``) first tries the option texts. Letters beyond the options are never returned.

    Args:
        reply: the generated text.
        options: the option texts (option ``i`` has letter ``LETTERS[i]``).

    Returns:
        ``"A"`` ... or None.
    """
    letters = LETTERS[: len(options)]
    text = reply.strip()
    if not text:
        return None
    for match in _EXPLICIT.finditer(text):
        letter = _group(match)
        if letter in letters:
            return letter
    leading = _LEADING.match(text)
    lead_letter = _group(leading) if leading is not None else None
    if lead_letter is not None and lead_letter in letters and not _ARTICLE.match(text):
        return lead_letter
    by_text = _by_text(text, options, letters)
    if by_text is not None:
        return by_text
    if lead_letter is not None and lead_letter in letters:
        return lead_letter  # "A dog ..." that matches no option: the reference takes the first letter too
    bracketed = {_group(m) for m in _BRACKETED.finditer(text)} & set(letters)
    if len(bracketed) == 1:
        return bracketed.pop()
    return None
