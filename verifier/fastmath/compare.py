"""Deciding whether two parsed answers are equal: True, False, or None (ask math-verify).

Scalars:
- Both sides must have the same variables. A side that is a lone variable is left to
  math-verify, which compares lone symbols by name only.
- Without variables, both sides are evaluated exactly (verifier/fastmath/surd.py). Equal terms
  are equal. Both rational: equal exactly or not at all (`0.333333` is not 1/3). Unequal terms
  are "not equal" only when the values differ by more than 1e-30 relative (the guard's limit
  after math-verify); closer than that, math-verify decides.
- A bare decimal against an irrational exact form (`3.14159265` for `\\pi`) follows the rule the
  math-verify path applies: equal when both round to the same 6 decimals and agree to 1e-6
  relative; undecided near a rounding boundary or with more than 15 significant digits.
- With variables: both sides are evaluated exactly at fresh random integer points (a new draw
  for every check, so an answer cannot be fitted to known points); a difference at any point
  is a proof of inequality, agreement at every point is equality with probability at least
  1 - (degree / 2^61)^POINTS (Schwartz-Zippel). Decimals with variables are undecided.
Equations: `v = f` is compared as f (math-verify's reading); an answer `constant = f` (`3 = 5`)
is not equal to any gold that is no equation, whatever f is.
Structures: tuples in order; sets (and comma lists, which math-verify reads as sets) without
regard to order or repeats; intervals and unions of intervals as sets of reals, after merging
overlapping and touching parts. Their elements follow the scalar rules, also where math-verify
alone would round.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from verifier.fastmath import surd
from verifier.fastmath.parse import (
    Add,
    Const,
    ConstantEquation,
    Div,
    Equation,
    FiniteSet,
    Interval,
    Mul,
    Neg,
    Node,
    Num,
    Pair,
    Pow,
    Root,
    Scalar,
    Shape,
    Union,
    Unsupported,
    Var,
    has_decimal,
    parse_side,
    variables,
)
from verifier.fastmath.surd import Terms

POINTS = 2
POINT_BITS = 62
MAX_EXPONENT = 10_000
MAX_ITEMS = 32
APART = Decimal("1e-30")  # closer than this, math-verify's path may still call two forms equal
DECIMAL_TOLERANCE = Decimal("1e-6")
MAX_DECIMAL_DIGITS = 15
MAX_DECIMAL = 10**9


def fast_equal(gold: str, answer: str, percent: str = "value") -> bool | None:
    """True or False when this path can decide soundly, None when math-verify must."""
    try:
        return shapes_equal(_parsed_gold(gold, percent), parse_side(answer, percent))
    except Unsupported:
        return None
    except (ArithmeticError, ValueError, RecursionError, MemoryError):
        return None  # a case the bounds above did not foresee: undecided, never a guess


@functools.lru_cache(maxsize=8192)
def _parsed_gold(gold: str, percent: str) -> Shape:
    return parse_side(gold, percent)  # trees are immutable, so sharing them across threads is safe


def shapes_equal(gold: Shape, answer: Shape) -> bool | None:
    if isinstance(gold, ConstantEquation) or isinstance(answer, ConstantEquation):
        return _constant_equation(gold, answer)
    gold, answer = _unwrap_equations(gold, answer)
    if isinstance(gold, Scalar) and isinstance(answer, Scalar):
        return scalars_equal(gold.expr, answer.expr)
    if isinstance(gold, Pair) and isinstance(answer, Pair):
        return _in_order(gold.items, answer.items)
    if isinstance(gold, FiniteSet) and isinstance(answer, FiniteSet):
        return _sets_equal(gold.items, answer.items)
    gold, answer = _as_interval(gold, answer), _as_interval(answer, gold)
    if isinstance(gold, Interval | Union) and isinstance(answer, Interval | Union):
        return _intervals_equal(gold, answer)
    return None  # mixed shapes: math-verify has its own conversions between them


def _constant_equation(gold: Shape, answer: Shape) -> bool | None:
    """An answer `3 = 5` (or `5 = 5`) is no final answer for a gold that is no equation: a value
    is `v` or `name = v`. math-verify alone would compare its right side, so `3 = 5` would pass
    for 5; the symbolic path refuses it too (verifier/scoring/math_handler.py)."""
    if isinstance(answer, ConstantEquation) and not isinstance(gold, Equation | ConstantEquation):
        return False
    return None  # against an equation gold, math-verify compares the relations


def _as_interval(side: Shape, other: Shape) -> Shape:
    """`(a, b)` next to an interval is the open interval, as math-verify reads it when a < b
    (and `_piece` refuses it otherwise)."""
    if isinstance(side, Pair) and len(side.items) == 2 and isinstance(other, Interval | Union):
        return Interval(side.items[0], side.items[1], False, False)
    return side


def _unwrap_equations(gold: Shape, answer: Shape) -> tuple[Shape, Shape]:
    """math-verify compares `y = f` with `g` as f with g, and `y = f` with `y = g` as f with g."""
    if not isinstance(gold, Equation) and not isinstance(answer, Equation):
        return gold, answer
    for side in (gold, answer):
        if isinstance(side, Equation) and side.var in variables(side.rhs):
            raise Unsupported  # `y = 2y - 2x` is a relation, which math-verify solves
        if not isinstance(side, Equation | Scalar):
            raise Unsupported
    if isinstance(gold, Equation) and isinstance(answer, Equation) and gold.var != answer.var:
        raise Unsupported
    return _rhs(gold), _rhs(answer)


def _rhs(side: Shape) -> Shape:
    return Scalar(side.rhs) if isinstance(side, Equation) else side


# ---------------------------------------------------------------------------- evaluation


def evaluate(node: Node, env: Mapping[str, Fraction]) -> Terms:
    """The exact value of `node` with variables set from `env`; Unsupported outside the field."""
    if isinstance(node, Num):
        return surd.rational(node.value)
    if isinstance(node, Const):
        return surd.monomial((1, 1, 0) if node.name == "pi" else (1, 0, 1), Fraction(1))
    if isinstance(node, Var):
        return surd.rational(env[node.name])
    if isinstance(node, Neg):
        return surd.negate(evaluate(node.arg, env))
    if isinstance(node, Add):
        return functools.reduce(surd.add, (evaluate(term, env) for term in node.terms))
    if isinstance(node, Mul):
        return functools.reduce(surd.multiply, (evaluate(factor, env) for factor in node.factors))
    if isinstance(node, Div):
        return surd.multiply(evaluate(node.num, env), surd.inverse(evaluate(node.den, env)))
    if isinstance(node, Pow):
        return _power(node, env)
    if isinstance(node, Root):
        if variables(node.arg):
            raise Unsupported  # sqrt(x^2) is |x|, not x: random points would not show it
        return surd.root(evaluate(node.arg, env), node.index)
    raise Unsupported


def _power(node: Pow, env: Mapping[str, Fraction]) -> Terms:
    if variables(node.exp):
        raise Unsupported
    exponent = surd.as_rational(evaluate(node.exp, env))
    if exponent is None or abs(exponent) > MAX_EXPONENT:
        raise Unsupported
    if exponent.denominator == 1:
        return surd.power(evaluate(node.base, env), int(exponent))
    if variables(node.base):
        raise Unsupported  # x^(1/2) has the same branch problem as sqrt(x)
    rooted = surd.root(evaluate(node.base, env), exponent.denominator)
    return surd.power(rooted, exponent.numerator)


# ---------------------------------------------------------------------------- scalars


def scalars_equal(gold: Node, answer: Node) -> bool | None:
    if isinstance(gold, Var) or isinstance(answer, Var):
        return True if gold == answer else None  # math-verify matches lone symbols by name
    names = variables(gold)
    if names != variables(answer):
        return None  # `x + y - y` against `x`: math-verify does not simplify across them
    if names:
        return _identical_functions(gold, answer, sorted(names))
    return constants_equal(Constant.of(gold), Constant.of(answer))


def _identical_functions(gold: Node, answer: Node, names: list[str]) -> bool:
    if has_decimal(gold) or has_decimal(answer):
        raise Unsupported  # math-verify mixes floats into its algebra (0.1x + 0.2x is not 0.3x)
    for _ in range(POINTS):
        offset = 1 << (POINT_BITS - 1)
        env = {name: Fraction(secrets.randbits(POINT_BITS) - offset) for name in names}
        if evaluate(gold, env) != evaluate(answer, env):
            return False
    return True


@dataclass(frozen=True)
class Constant:
    """A constant side: its exact value, and its value if it is written as one bare decimal."""

    terms: Terms
    decimal: Fraction | None
    other_decimals: bool  # decimals inside a larger expression

    @staticmethod
    def of(node: Node) -> Constant:
        bare = _bare_decimal(node)
        return Constant(evaluate(node, {}), bare, bare is None and has_decimal(node))


def _bare_decimal(node: Node) -> Fraction | None:
    """The value of `1.5` or `-1.5` (a float to math-verify); None for anything else."""
    if isinstance(node, Neg):
        inner = _bare_decimal(node.arg)
        return None if inner is None else -inner
    if isinstance(node, Num) and node.decimal and not node.percent:
        return node.value
    return None


def constants_equal(gold: Constant, answer: Constant) -> bool | None:
    if gold.other_decimals or answer.other_decimals:
        return None
    if surd.is_rational(gold.terms) and surd.is_rational(answer.terms):
        return gold.terms == answer.terms  # both rational: exact, whatever was written
    if gold.decimal is not None:
        return _approximates(gold.decimal, answer.terms)
    if answer.decimal is not None:
        return _approximates(answer.decimal, gold.terms)
    if gold.terms == answer.terms:
        return True
    return False if surd.certainly_apart(gold.terms, answer.terms, APART) else None


def _approximates(written: Fraction, exact: Terms) -> bool | None:
    """A decimal against an irrational: the same 6 decimals and 1e-6 relative, or undecided."""
    if not _plain_decimal(written) or (written * 10**6).denominator == 2:
        return None  # on a rounding boundary, where the float's last bits decide
    target = surd.rational(written)
    if surd.rounded(exact, 6) != round(written * 10**6):
        return False
    if surd.certainly_within(target, exact, DECIMAL_TOLERANCE):
        return True
    return False if surd.certainly_apart(target, exact, DECIMAL_TOLERANCE) else None


def _plain_decimal(value: Fraction) -> bool:
    """Small enough and short enough that math-verify's float holds it exactly to 6 places."""
    if abs(value) >= MAX_DECIMAL:
        return False
    scale = 1
    while (value * scale).denominator != 1:
        scale *= 10
    return len(str(abs((value * scale).numerator))) <= MAX_DECIMAL_DIGITS


# ---------------------------------------------------------------------------- structures


def _in_order(gold: tuple[Node, ...], answer: tuple[Node, ...]) -> bool | None:
    if len(gold) != len(answer):
        return False
    verdicts = [scalars_equal(g, a) for g, a in zip(gold, answer, strict=True)]
    if False in verdicts:
        return False
    return None if None in verdicts else True


def _sets_equal(gold: tuple[Node, ...], answer: tuple[Node, ...]) -> bool | None:
    if len(gold) > MAX_ITEMS or len(answer) > MAX_ITEMS:
        raise Unsupported
    if any(variables(item) or has_decimal(item) for item in gold + answer):
        # math-verify pairs symbolic elements by sort order, not by value; and a decimal that
        # approximates one element would make "equal" stop being transitive
        raise Unsupported
    mine, theirs = _distinct(gold), _distinct(answer)
    if len(mine) != len(theirs):
        return False
    return all(any(_decided(constants_equal(g, a)) for a in theirs) for g in mine)


def _distinct(items: tuple[Node, ...]) -> list[Constant]:
    """One constant per distinct value (sets drop repeats); every comparison must be decisive."""
    kept: list[Constant] = []
    for item in items:
        constant = Constant.of(item)
        if not any(_decided(constants_equal(constant, other)) for other in kept):
            kept.append(constant)
    return kept


def _decided(verdict: bool | None) -> bool:
    if verdict is None:
        raise Unsupported
    return verdict


# ---------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class _Piece:
    start: Terms | None  # None: minus infinity
    end: Terms | None  # None: plus infinity
    left_closed: bool
    right_closed: bool


def _intervals_equal(gold: Interval | Union, answer: Interval | Union) -> bool:
    mine, theirs = _normalized(gold), _normalized(answer)
    if len(mine) != len(theirs):
        return False
    return all(a == b for a, b in zip(mine, theirs, strict=True))


def _normalized(shape: Interval | Union) -> list[_Piece]:
    """Disjoint pieces in increasing order: overlapping and touching pieces merged."""
    parts = shape.parts if isinstance(shape, Union) else (shape,)
    if len(parts) > MAX_ITEMS:
        raise Unsupported
    pieces = sorted((_piece(part) for part in parts), key=_start_key)
    merged = [pieces[0]]
    for piece in pieces[1:]:
        joined = _join(merged[-1], piece)
        if joined is None:
            merged.append(piece)
        else:
            merged[-1] = joined
    return merged


def _piece(part: Interval) -> _Piece:
    start, end = _endpoint(part.start), _endpoint(part.end)
    if start is not None and end is not None and surd.order(start, end) >= 0:
        raise Unsupported  # empty or a single point: SymPy turns these into other sets
    return _Piece(start, end, part.left_closed, part.right_closed)


def _endpoint(node: Node | None) -> Terms | None:
    if node is None:
        return None
    if variables(node) or has_decimal(node):
        raise Unsupported
    return evaluate(node, {})


def _start_key(piece: _Piece) -> Decimal:
    return Decimal("-Infinity") if piece.start is None else surd.numeric(piece.start)[0]


def _join(first: _Piece, second: _Piece) -> _Piece | None:
    """`first` and `second` as one piece if they overlap or touch (first starts no later)."""
    if first.start is not None and second.start is not None and surd.order(first.start, second.start) > 0:
        raise Unsupported  # the numeric sort disagreed with the exact order
    left_closed = first.left_closed or (first.start == second.start and second.left_closed)
    if first.end is None:
        return _Piece(first.start, None, left_closed, False)
    gap = -1 if second.start is None else surd.order(second.start, first.end)
    if gap > 0 or (gap == 0 and not (first.right_closed or second.left_closed)):
        return None  # disjoint, or touching at a point that neither contains
    if second.end is None:
        return _Piece(first.start, None, left_closed, False)
    later = surd.order(first.end, second.end)
    end, right_closed = (first.end, first.right_closed) if later > 0 else (second.end, second.right_closed)
    if later == 0:
        right_closed = first.right_closed or second.right_closed
    return _Piece(first.start, end, left_closed, right_closed)
