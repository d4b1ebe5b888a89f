"""Multiple-choice prompt and answer-letter parsing (the paper's setup)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnizip_stream.evaluation import EvalItem, build_prompt, eval_system_prompt, parse_answer
from omnizip_stream.evaluation.prompting import INSTRUCTION, SYSTEM_SUFFIX

OPTIONS = ["a red car", "a blue dog", "hot dog", "the cat"]


@pytest.mark.parametrize("reply,expected", [
    ("A", "A"), ("B", "B"), ("(C)", "C"), ("D.", "D"), ("B) a blue dog", "B"), ("[A]", "A"),
    ("Answer: B", "B"), ("answer: c", "C"), ("The answer is C", "C"), ("The correct answer is: D.", "D"),
    ("the answer is (b)", "B"), ("Option C is right", "C"), ("**D**", "D"), ("  A  ", "A"),
    ("b", "B"), ("c.", "C"), ("(d)", "D"),
    ("a blue dog", "B"), ("The cat.", "D"), ("hot dog", "C"),  # option text, longest containing match
    ("I think (C)", "C"),
    ("A dog barks", "A"),  # matches no option text: the first letter, as the reference scripts do
    ("", None), ("   ", None), ("xyz", None), ("E", None), ("(F)", None),
    ("The answer is a dog", None),  # the article "a" is not a letter
    ("dog", None),  # in two options, neither containing the other's context: ambiguous
])
def test_parse_answer_shapes(reply, expected):
    assert parse_answer(reply, OPTIONS) == expected


def test_article_reply_prefers_option_text():
    assert parse_answer("A blue dog, clearly", ["a red car", "a blue dog"]) == "B"


# no h/p/w in the alphabet: an option text cannot spell "answer", "option" or "choice"
_TEXT = st.text(alphabet="abcdefgijklmnoqrstuvxyz ", min_size=3, max_size=12).map(str.strip).filter(
    lambda s: len(s) >= 3)
_TEMPLATES = ["{L}", "({L})", "{L}.", "{L}. {T}", "Answer: {L}", "The answer is {L}.", "answer is ({l})",
              "{l})", "Option {L}", "**{L}**", "The best answer is {L}", "{T}"]


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(_TEXT, min_size=2, max_size=6, unique=True), data=st.data())
def test_every_usual_shape_parses_to_its_letter(texts, data):
    # option texts must not contain one another, or "{T}" is genuinely ambiguous
    if any(a != b and f" {a} " in f" {b} " for a in texts for b in texts):
        return
    index = data.draw(st.integers(0, len(texts) - 1))
    template = data.draw(st.sampled_from(_TEMPLATES))
    letter = "ABCDEF"[index]
    reply = template.format(L=letter, l=letter.lower(), T=texts[index])
    assert parse_answer(reply, texts) == letter


@settings(max_examples=200, deadline=None)
@given(reply=st.text(max_size=40), n=st.integers(2, 6))
def test_never_returns_a_letter_beyond_the_options(reply, n):
    result = parse_answer(reply, [f"option {i}" for i in range(n)])
    assert result is None or result in "ABCDEF"[:n]


def test_prompt_lists_lettered_options_and_instruction():
    item = EvalItem("jsonl", "q", "v.mp4", "What moves?", ("a square", "a circle"), "A")
    assert build_prompt(item) == f"What moves?\nOptions:\nA. a square\nB. a circle\n{INSTRUCTION}"


def test_system_prompt_extends_the_models_default():
    assert eval_system_prompt("You are Qwen.") == f"You are Qwen. {SYSTEM_SUFFIX}"
    assert eval_system_prompt(None) == SYSTEM_SUFFIX
    assert eval_system_prompt("  ") == SYSTEM_SUFFIX
