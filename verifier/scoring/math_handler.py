"""Symbolic math equivalence, run inside a sandboxed service (see verifier/pool.py).

math-verify does the parsing (LaTeX only: its plain-expression parser evaluates text with
SymPy's `parse_expr`, i.e. `eval`) and the equivalence test. Its own timeouts are off
(`parsing_timeout=None`, `timeout_seconds=None`): they rely on SIGALRM, and the service kills
overrunning requests itself. A True from math-verify then passes an exactness guard, because
math-verify compares numbers after rounding to 6 digits, which equates 1/2^99 with 1/2^98 and
0.1234567 with 0.1234568. Before that, an answer that is an equation or inequality where the
gold is none must be `name = value` (see `relation_reason`).
"""

from __future__ import annotations

from typing import Any

import sympy
from math_verify import LatexExtractionConfig, parse, verify
from sympy.core.function import AppliedUndef
from sympy.core.relational import Equality, Relational
from sympy.logic.boolalg import And

# math-verify parses LaTeX with an ANTLR grammar and never evaluates text, so requests can run in
# the service process itself, keeping SymPy's caches warm (several times faster than a fresh
# child per request); an overrun or a crash still discards the whole process.
FORK_PER_REQUEST = False
MAX_GOLD_CACHE = 8192
IRRATIONAL_TOL = sympy.Rational(1, 10**30)  # exact forms must agree to 30 digits
DECIMAL_TOL = sympy.Rational(1, 10**6)  # a decimal approximation must agree to 6 digits
_CONFIG = [LatexExtractionConfig(boxed_match_priority=0)]
_gold_cache: dict[str, list[Any]] = {}


def _parse(latex: str) -> list[Any]:
    return list(parse("\\boxed{" + latex + "}", extraction_config=_CONFIG, parsing_timeout=None))


def parsed_gold(gold: str) -> list[Any]:
    cached = _gold_cache.get(gold)
    if cached is None:
        if len(_gold_cache) >= MAX_GOLD_CACHE:
            _gold_cache.clear()
        cached = _gold_cache[gold] = _parse(gold)
    return cached


def prepare(payload: dict[str, Any]) -> None:
    """Runs in the long-lived service process: forked children inherit the parsed gold."""
    parsed_gold(str(payload["gold"]))


def handle(payload: dict[str, Any]) -> dict[str, Any]:
    gold = parsed_gold(str(payload["gold"]))
    if not gold:
        return {"equal": False, "reason": "the reference answer could not be parsed"}
    answer = _parse(str(payload["answer"]))
    if not answer:
        return {"equal": False, "reason": "the answer could not be parsed"}
    refused = relation_reason(gold, answer)
    if refused is not None:
        return {"equal": False, "reason": refused}
    if not verify(gold, answer, timeout_seconds=None):
        return {"equal": False, "reason": "not equivalent to the reference answer"}
    if not exact_enough(gold[0], answer[0]):
        return {"equal": False, "reason": "equal only after rounding"}
    return {"equal": True, "reason": ""}


def relation_reason(gold: list[Any], answer: list[Any]) -> str | None:
    """Why an equation or inequality answer cannot stand for a gold that is none, or None.

    math-verify compares any equation answer by its last right-hand side when the gold is no
    equation, so `3 = 5`, `2x + z = 5` and `x = 3 = 5` would all pass for 5. An answer relation
    stands for a value only as one assignment `name = value` (`x = 5`, `a_n = 5`, `f(x) = 5`)."""
    if any(_is_relation(item) for item in gold):
        return None  # relation against relation: math-verify's own comparison
    for item in answer:
        if _is_relation(item) and not _is_assignment(item):
            return "an equation is a final answer only as `name = value`"
    return None


def _is_relation(item: Any) -> bool:
    if isinstance(item, And):
        return any(_is_relation(arg) for arg in item.args)
    return isinstance(item, Relational)


def _is_assignment(item: Any) -> bool:
    if not isinstance(item, Equality):
        return False
    lhs = item.lhs
    if isinstance(lhs, AppliedUndef):
        return all(isinstance(arg, sympy.Symbol) for arg in lhs.args)
    return isinstance(lhs, sympy.Symbol)


def _rational(expr: sympy.Expr) -> sympy.Expr:
    """Decimals as the exact rationals they denote (0.1 is 1/10, not a binary float)."""
    floats = expr.atoms(sympy.Float)
    return expr.xreplace({f: sympy.Rational(str(f)) for f in floats}) if floats else expr


def exact_enough(gold: Any, answer: Any) -> bool:
    """False when two numbers math-verify called equal differ beyond what the forms allow."""
    if not isinstance(gold, sympy.Expr) or not isinstance(answer, sympy.Expr):
        return True  # sets, intervals, matrices, strings: math-verify's structural compare stands
    if gold.free_symbols or answer.free_symbols or not (gold.is_number and answer.is_number):
        return True
    has_decimal = bool(gold.atoms(sympy.Float) or answer.atoms(sympy.Float))
    g, a = _rational(gold), _rational(answer)
    if g.is_Rational and a.is_Rational:
        return bool(g == a)
    gv, av = sympy.N(g, 60), sympy.N(a, 60)
    tol = DECIMAL_TOL if has_decimal else IRRATIONAL_TOL
    scale = max(abs(gv), abs(av))
    return bool(abs(gv - av) <= tol * scale)
