"""Math answers: `\\boxed{}` extraction, input caps, a fast exact path, then sandboxed SymPy.

Order of checks, cheapest first:
1. caps on the completion and on the boxed answer, and exactly one distinct boxed answer;
2. rejection of answers built to be slow (exponent towers, huge factorials, deep nesting, sums);
3. the fast exact path: integers, decimals and simple fractions on both sides are compared as
   exact rationals in this process, without SymPy (most GSM8K-style answers end here);
4. the identical path: the same LaTeX tokens on both sides;
5. the fast symbolic path (verifier/fastmath/): common MATH shapes (roots, pi, e, powers,
   polynomials, tuples, sets, intervals, `y = ...`) decided exactly in this process, or left
   undecided;
6. otherwise math-verify in a sandboxed service pool with a hard kill (verifier/pool.py).
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction
from typing import Any

from shared.protocol import MAX_TEXT_CHARS, Verdict, VerifierSpec
from verifier.fastmath import fast_equal
from verifier.pool import ServiceSpec, get_pool

MAX_COMPLETION_CHARS = MAX_TEXT_CHARS
MAX_BOXED_CHARS = 512
MAX_NESTING = 24
MAX_EXPONENT = 10_000
MAX_FACTORIAL = 1_000
MAX_DIGITS = 1_000
SERVICE = ServiceSpec("verifier.scoring.math_handler", timeout_s=5.0, memory_mb=2048, cpu_s=5.0)
_BOX_OPENERS = ("\\boxed{", "\\fbox{")
_FORBIDDEN = re.compile(r"\\(sum|prod|int|iint|iiint|oint|lim|coprod|bigcup|bigcap)(?![a-zA-Z])")
_EXPONENT = re.compile(r"\^\s*\{?\s*(\d+)")
_FACTORIAL = re.compile(r"(\d+)\s*!")
_DIGITS = re.compile(r"\d{" + str(MAX_DIGITS + 1) + ",}")
_SPACES = re.compile(r"\\[,;:! ]|\\left|\\right|\s+|\$")
_NUMBER = re.compile(r"([+-]?)(\d{1,3}(?:,\d{3})+|\d+(?:\.\d*)?|\.\d+)")
_FRAC = re.compile(r"([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}")
_SLASH = re.compile(r"([+-]?\d+)/([+-]?\d+)")
_TOKEN = re.compile(r"\\[a-zA-Z]+|\\.|\S")
_SPACING = frozenset({"\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "$"})
_SYNONYMS = {"\\dfrac": "\\frac", "\\tfrac": "\\frac"}


# ---------------------------------------------------------------------------- extraction


def boxed_answers(text: str) -> list[str] | None:
    """Contents of every \\boxed{...}/\\fbox{...}; None if one is longer than the cap."""
    found: list[tuple[int, str]] = []
    for opener in _BOX_OPENERS:
        start = text.find(opener)
        while start != -1:
            content = _braced(text, start + len(opener))
            if content is None:
                return None
            found.append((start, content))
            start = text.find(opener, start + 1)
    return [content for _, content in sorted(found)]


def _braced(text: str, begin: int) -> str | None:
    """The text up to the brace that closes at `begin`; None if longer than MAX_BOXED_CHARS."""
    depth = 1
    end = min(len(text), begin + MAX_BOXED_CHARS + 1)
    for index in range(begin, end):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[begin:index]
    return None if end - begin > MAX_BOXED_CHARS else text[begin:end]


def final_answer(completion: str) -> tuple[str | None, str]:
    """The one boxed answer of a completion, or None and why not."""
    if len(completion) > MAX_COMPLETION_CHARS:
        return None, f"completion longer than {MAX_COMPLETION_CHARS} characters"
    text = completion.rsplit("</think>", 1)[-1]
    boxes = boxed_answers(text)
    if boxes is None:
        return None, f"boxed answer longer than {MAX_BOXED_CHARS} characters"
    distinct = {_SPACES.sub("", box) for box in boxes}
    if not boxes:
        return None, "no \\boxed{} answer"
    if len(distinct) > 1:
        return None, "more than one boxed answer"
    return boxes[-1].strip(), ""


def slow_answer_reason(latex: str) -> str | None:
    """Why `latex` looks built to make SymPy slow, or None."""
    depth = deepest = 0
    for char in latex:
        if char in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "})]":
            depth -= 1
    if deepest > MAX_NESTING:
        return "nested too deeply"
    if _FORBIDDEN.search(latex):
        return "sums, products, integrals and limits are not final answers"
    if _DIGITS.search(latex):
        return f"a number with more than {MAX_DIGITS} digits"
    if any(int(e) > MAX_EXPONENT for e in _EXPONENT.findall(latex)):
        return "exponent too large"
    if re.search(r"\^\s*\{[^{}]*\^", latex) or re.search(r"\^\s*\{[^{}]*\{[^{}]*\^", latex):
        return "exponent tower"
    if any(int(n) > MAX_FACTORIAL for n in _FACTORIAL.findall(latex)) or re.search(r"!\s*\)?\s*!", latex):
        return "factorial too large"
    return None


# ---------------------------------------------------------------------------- fast exact path


def _normalize(latex: str, percent: str) -> str:
    text = _SPACES.sub("", latex)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    text = text.replace("\\%", "%")
    if percent == "ignore":
        text = text.replace("%", "")
    return text


@functools.lru_cache(maxsize=65536)
def exact_value(latex: str, percent: str = "value") -> Fraction | None:
    """The exact rational an integer/decimal/simple-fraction answer denotes, else None."""
    text = _normalize(latex, percent)
    scale = Fraction(1)
    if text.endswith("%"):
        text, scale = text[:-1], Fraction(1, 100)
    if len(text) > 64:
        return None
    for pattern in (_NUMBER, _FRAC, _SLASH):
        match = pattern.fullmatch(text)
        if match:
            value = _to_fraction(pattern, match.groups())
            return None if value is None else value * scale
    return None


def _to_fraction(pattern: re.Pattern[str], groups: tuple[str | Any, ...]) -> Fraction | None:
    """The number a matched answer denotes; None for a zero denominator, which denotes none (so
    `5/0` is no number at all, and never equals a gold 0)."""
    if pattern is _NUMBER:
        sign, digits = groups
        value = Fraction(digits.replace(",", "")) if not digits.endswith(".") else Fraction(digits[:-1])
        return -value if sign == "-" else value
    if pattern is _FRAC:
        sign, num, den = groups
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return -value if sign == "-" else value
    num, den = groups
    return Fraction(int(num), int(den)) if int(den) != 0 else None


def latex_tokens(latex: str, percent: str = "value") -> list[str]:
    """LaTeX as tokens, spacing commands and whitespace dropped: two answers with the same tokens
    are the same expression (`\\pi r` and `\\pir` differ: the command names differ)."""
    dropped = _SPACING | ({"\\%", "%"} if percent == "ignore" else set())
    return [_SYNONYMS.get(t, t) for t in _TOKEN.findall(latex) if t not in dropped]


# ---------------------------------------------------------------------------- verify


def gold_latex(gold: Any) -> str | None:
    """The reference answer as LaTeX: numbers as written, strings without a surrounding box."""
    if isinstance(gold, bool) or gold is None:
        return None
    if isinstance(gold, int | float):
        return repr(gold)
    text = str(gold).strip().strip("$").strip()
    boxes = boxed_answers(text)
    return boxes[-1] if boxes else text


def verify_math(spec: VerifierSpec, answer: str) -> Verdict:
    gold = gold_latex(spec.gold)
    if gold is None or not gold:
        return _zero("the spec has no reference answer")
    percent = str(spec.config.get("percent", "value"))
    boxed, why = final_answer(answer)
    if boxed is None:
        return _zero(why)
    slow = slow_answer_reason(boxed)
    if slow is not None:
        return _zero(f"rejected answer: {slow}")
    want, got = exact_value(gold, percent), exact_value(boxed, percent)
    if want is not None and got is not None:
        # Both sides are plain numbers: exact rational comparison is the whole answer.
        return _verdict(want == got, "" if want == got else "not equal to the reference answer", "exact")
    if latex_tokens(gold, percent) == latex_tokens(boxed, percent):
        return _verdict(True, "", "identical")  # the same expression, written the same way
    decided = fast_equal(gold, boxed, percent)
    if decided is not None:
        return _verdict(decided, "" if decided else "not equal to the reference answer", "fast-symbolic")
    return symbolic_verdict(gold, boxed, percent)


def symbolic_verdict(gold: str, boxed: str, percent: str = "value") -> Verdict:
    """math-verify's verdict alone, from the service pool (the last step of `verify_math`)."""
    payload = {"gold": _percent_form(gold, percent), "answer": _percent_form(boxed, percent)}
    reply = get_pool(SERVICE).call(payload)
    if reply.result is None:
        return _zero(f"symbolic check failed: {reply.failure}", {"path": "symbolic"})
    equal = bool(reply.result.get("equal"))
    return _verdict(equal, str(reply.result.get("reason", "")), "symbolic")


def _percent_form(latex: str, percent: str) -> str:
    """'x%' as x/100 ("value", the default) or as x ("ignore"), spelled so math-verify sees it."""
    text = latex.replace("\\%", "%")
    return text.replace("%", "" if percent == "ignore" else "\\cdot\\frac{1}{100}")


def _verdict(equal: bool, reason: str, path: str) -> Verdict:
    return Verdict(score=1.0 if equal else 0.0, passed=equal, reason=reason, details={"path": path})


def _zero(reason: str, details: dict[str, Any] | None = None) -> Verdict:
    return Verdict(score=0.0, passed=False, reason=reason, details=details or {})
