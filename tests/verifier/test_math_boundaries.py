"""Boundaries of the math verifier: caps to the character, nesting and exponent limits, signs, the
percent modes, extraction of the one final answer, and what a rejection looks like.

Each case decides a verdict: an answer one character over a cap, one sign off, or hidden among
several boxed answers must not pass, and an answer exactly at a limit must not be refused.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from shared.protocol import Verdict, VerifierSpec
from verifier.math import (
    MAX_BOXED_CHARS,
    MAX_COMPLETION_CHARS,
    MAX_EXPONENT,
    MAX_FACTORIAL,
    MAX_NESTING,
    exact_value,
    gold_latex,
    latex_tokens,
    slow_answer_reason,
    symbolic_verdict,
    verify_math,
)


def check(gold: Any, answer: str, **config: Any) -> Verdict:
    return verify_math(VerifierSpec(kind="math", gold=gold, config=config), answer)


def assert_refused(verdict: Verdict, reason: str) -> None:
    assert verdict.passed is False
    assert verdict.score == 0.0
    assert reason in verdict.reason


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("no box here", "no \\boxed{} answer"),
        ("\\boxed{1} then \\boxed{2}", "more than one boxed answer"),
        # A third box may not hide a second distinct answer between two equal ones.
        ("\\boxed{5} \\boxed{4} \\boxed{5}", "more than one boxed answer"),
        ("\\fbox{4} \\boxed{5}", "more than one boxed answer"),
        ("\\boxed{" + "1" * (MAX_BOXED_CHARS + 1) + "}", f"longer than {MAX_BOXED_CHARS}"),
        ("\\boxed{\\sum_{k=1}^{5} k}", "rejected answer"),
    ],
)
def test_refusals_neither_pass_nor_score(answer: str, reason: str) -> None:
    assert_refused(check("5", answer), reason)


@pytest.mark.parametrize("gold", [None, "", "  ", "$$", True])
def test_a_spec_without_a_reference_answer_passes_nothing(gold: Any) -> None:
    assert_refused(check(gold, "\\boxed{5}"), "no reference answer")


def test_boxed_answer_cap_is_exact() -> None:
    digits = "1" * MAX_BOXED_CHARS
    assert check(digits, f"\\boxed{{{digits}}}").passed
    assert_refused(check(digits, f"\\boxed{{{digits}1}}"), "longer than")


def test_completion_cap_is_exact() -> None:
    box = "\\boxed{7}"
    at_cap = " " * (MAX_COMPLETION_CHARS - len(box)) + box
    assert len(at_cap) == MAX_COMPLETION_CHARS
    assert check("7", at_cap).passed
    assert_refused(check("7", " " + at_cap), f"longer than {MAX_COMPLETION_CHARS}")


def test_only_the_text_after_the_last_think_block_counts() -> None:
    answer = "<think>\\boxed{1}</think> more \\boxed{3}</think> so \\boxed{2}"
    assert check("2", answer).passed
    assert not check("3", answer).passed


@pytest.mark.parametrize(
    ("gold", "answer", "passed"),
    [
        ("-5", "\\boxed{5}", False),
        ("5", "\\boxed{-5}", False),
        ("-5", "\\boxed{-5}", True),
        ("-\\frac{1}{2}", "\\boxed{\\frac{1}{2}}", False),
        ("-\\frac{1}{2}", "\\boxed{-\\frac{1}{2}}", True),
        ("12", "\\boxed{12.}", True),  # a trailing decimal point
        ("1", "\\boxed{12.}", False),
        ("6", "\\boxed{\\frac{6}{1}}", True),
        ("6", "\\boxed{6/1}", True),
    ],
)
def test_exact_path_signs_and_denominators(gold: str, answer: str, passed: bool) -> None:
    verdict = check(gold, answer)
    assert verdict.passed is passed
    assert verdict.score == (1.0 if passed else 0.0)
    assert verdict.details["path"] == "exact"
    assert verdict.reason == ("" if passed else "not equal to the reference answer")


@pytest.mark.parametrize("gold", ["0", "1", "-5", "\\frac{1}{2}"])
@pytest.mark.parametrize(
    "answer", ["\\boxed{\\frac{5}{0}}", "\\boxed{5/0}", "\\boxed{-\\frac{1}{0}}", "\\boxed{0/0}"]
)
def test_a_zero_denominator_is_no_number_and_equals_no_gold(gold: str, answer: str) -> None:
    """`5/0` once read as 0 on the exact path, and so passed for a gold 0."""
    assert exact_value(answer.removeprefix("\\boxed{").removesuffix("}")) is None
    verdict = check(gold, answer)
    assert not verdict.passed and verdict.score == 0.0


@pytest.mark.parametrize(
    ("gold", "answer", "percent", "passed"),
    [
        ("50\\%", "\\boxed{50}", "ignore", True),
        ("50", "\\boxed{50\\%}", "ignore", True),
        ("50", "\\boxed{50%}", "ignore", True),
        ("50", "\\boxed{50\\%}", "value", False),
        ("0.5", "\\boxed{50\\%}", "value", True),
    ],
)
def test_percent_modes(gold: str, answer: str, percent: str, passed: bool) -> None:
    assert check(gold, answer, percent=percent).passed is passed


def test_percent_defaults_to_value() -> None:
    assert check("0.5", "\\boxed{50\\%}").passed
    assert not check("50", "\\boxed{50\\%}").passed


def test_exact_values() -> None:
    assert exact_value("\\tfrac{1}{2}") == Fraction(1, 2)
    assert exact_value("\\dfrac{3}{4}") == Fraction(3, 4)
    assert exact_value("50%", "ignore") == 50
    assert exact_value("50\\%", "ignore") == 50
    assert exact_value("50%") == Fraction(1, 2)


def test_identical_tokens_pass_with_an_empty_reason() -> None:
    verdict = check("3\\pi r", "\\boxed{3 \\pi r}")
    assert verdict.passed and verdict.reason == "" and verdict.details["path"] == "identical"


def test_identical_path_drops_percent_signs_when_ignored() -> None:
    assert latex_tokens("3\\pi%", "ignore") == latex_tokens("3\\pi", "ignore")
    assert latex_tokens("3\\pi\\%", "ignore") == latex_tokens("3\\pi", "ignore")
    assert latex_tokens("3\\pi%") != latex_tokens("3\\pi")
    verdict = check("3\\pi r\\%", "\\boxed{3\\pi r}", percent="ignore")
    assert verdict.passed and verdict.details["path"] == "identical"


def test_fast_symbolic_reasons() -> None:
    good = check("\\sqrt{8}", "\\boxed{2\\sqrt{2}}")
    assert good.passed and good.reason == "" and good.details["path"] == "fast-symbolic"
    bad = check("\\sqrt{8}", "\\boxed{3\\sqrt{2}}")
    assert not bad.passed and bad.reason == "not equal to the reference answer"
    assert bad.details["path"] == "fast-symbolic"


def test_fast_symbolic_path_honours_ignored_percent() -> None:
    verdict = check("2\\sqrt{2}", "\\boxed{\\sqrt{8}\\%}", percent="ignore")
    assert verdict.passed and verdict.details["path"] == "fast-symbolic"


@pytest.mark.parametrize(
    ("gold", "latex"),
    [
        ("$x+1$", "x+1"),
        ("$X$", "X"),  # only dollar signs are stripped, not the letters around them
        ("  $ 3 $ ", "3"),
        ("\\boxed{3}", "3"),
        ("\\boxed{1}, \\boxed{2}, \\boxed{3}", "3"),
        (72, "72"),
        (0.5, "0.5"),
    ],
)
def test_gold_latex(gold: Any, latex: str) -> None:
    assert gold_latex(gold) == latex


def _nested(depth: int, open_: str = "{", close: str = "}") -> str:
    return open_ * depth + "x" + close * depth


@pytest.mark.parametrize(("open_", "close"), [("{", "}"), ("(", ")"), ("[", "]")])
def test_nesting_limit_is_exact(open_: str, close: str) -> None:
    assert slow_answer_reason(_nested(MAX_NESTING, open_, close)) is None
    assert slow_answer_reason(_nested(MAX_NESTING + 1, open_, close)) == "nested too deeply"


def test_sibling_groups_are_not_nesting() -> None:
    assert slow_answer_reason("{x}" * (MAX_NESTING + 5)) is None
    assert slow_answer_reason("(x)" * (MAX_NESTING + 5) + _nested(MAX_NESTING)) is None


def test_exponent_limit_is_exact() -> None:
    assert slow_answer_reason(f"x^{{{MAX_EXPONENT}}}") is None
    assert slow_answer_reason(f"x^{{{MAX_EXPONENT + 1}}}") == "exponent too large"


@pytest.mark.parametrize("latex", ["2^{3^{4}}", "2^{x{y^{2}}}"])
def test_exponent_towers(latex: str) -> None:
    assert slow_answer_reason(latex) == "exponent tower"


@pytest.mark.parametrize(
    "latex",
    [
        "{}" * (MAX_NESTING + 5),  # closed groups side by side never nest
        "X" * (MAX_NESTING + 5),  # letters are not brackets
        "(x)[y]{z}" * (MAX_NESTING + 5),
    ],
)
def test_flat_answers_are_not_nested(latex: str) -> None:
    assert slow_answer_reason(latex) is None


@pytest.mark.parametrize("prefix", ["{}" * 3, "X" * 5, "()" * 2 + "[]"])
def test_closed_groups_before_a_deep_one_do_not_hide_it(prefix: str) -> None:
    assert slow_answer_reason(prefix + _nested(MAX_NESTING + 1)) == "nested too deeply"


def test_factorial_limit_is_exact() -> None:
    assert slow_answer_reason(f"{MAX_FACTORIAL}!") is None
    assert slow_answer_reason(f"{MAX_FACTORIAL + 1}!") == "factorial too large"


def test_spacing_is_dropped_before_the_exact_path() -> None:
    assert exact_value("1\\,000") == 1000
    assert exact_value("$5$") == 5
    assert exact_value("\\left(5\\right)") is None  # brackets are not a plain number
    assert exact_value(" 7 ") == 7


def test_identical_path_drops_percent_signs_on_the_answer_side() -> None:
    verdict = check("3\\pi r", "\\boxed{3\\pi r\\%}", percent="ignore")
    assert verdict.passed and verdict.details["path"] == "identical"


@pytest.mark.parametrize(
    ("gold", "boxed", "percent", "passed"),
    [
        ("50", "50\\%", "ignore", True),
        ("50", "50%", "ignore", True),
        ("50\\%", "50", "ignore", True),
        ("0.5", "50\\%", "value", True),
        ("0.5", "50%", "value", True),
        ("50\\%", "0.5", "value", True),
        ("50", "50\\%", "value", False),
        ("50\\%", "50", "value", False),
    ],
)
def test_symbolic_path_percent_modes(gold: str, boxed: str, percent: str, passed: bool) -> None:
    verdict = symbolic_verdict(gold, boxed, percent)
    assert verdict.passed is passed and verdict.details["path"] == "symbolic"


def test_verify_math_hands_the_percent_mode_to_the_symbolic_path() -> None:
    verdict = check("50", "\\boxed{50\\% \\text{ apples}}", percent="ignore")
    assert verdict.passed and verdict.details["path"] == "symbolic"
    assert not check("50", "\\boxed{50\\% \\text{ apples}}").passed
