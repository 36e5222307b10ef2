"""A small LaTeX reader for final answers; it builds a tree and never evaluates text.

Supported: integers, decimals, `\\frac` (and `\\dfrac`, `\\tfrac`, `\\cfrac`), `a/b`, `\\sqrt{}` and
`\\sqrt[n]{}`, `^` with an integer or braced exponent, `\\pi`, `e`, single-letter variables,
implicit multiplication, `\\cdot`, `\\times`, `\\div`, unary signs, parentheses, `x\\%` after a
number, degree signs; and as whole answers: `v = expr`, `constant = expr`, tuples `(a, b, ...)`,
intervals with open or closed ends (`\\infty` only there), unions of intervals, sets `\\{a, b\\}`,
comma lists.

Where math-verify (the reference, and the fallback) reads a form unlike ordinary notation, this
reader either reads it the same way or refuses it, so that both paths mean the same thing:
- implicit multiplication binds tighter than `/`, `\\cdot`, `\\times` (`1/2x` is 1/(2x));
- `x^12` is x^(12) and `\\frac12` is 1/2 (math-verify's readings);
- refused: `2\\frac{1}{2}` and `2 3` (math-verify adds juxtaposed numbers: mixed fractions),
  a number after another factor (`x2`, `x^2 3`), runs of letters (`xy`, units such as `ft`, the
  words `and`/`or`, which math-verify rewrites), `i`/`o`/capitals (imaginary unit, a unit,
  case-folded names), `\\frac123`, `\\sqrt12`, `x^-1`, towers `a^b^c`, `1e5`, `{,}`, a comma
  list that could be a thousands separator (`1,234` is one number there), `a \\div b c`, a
  percent sign in a divisor or an exponent, and every command not listed above.
Refusal raises `Unsupported`; the caller then asks math-verify.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from math import isqrt
from typing import TypeAlias

MAX_CHARS = 1024
MAX_TOKENS = 400
MAX_DEPTH = 30
MAX_DIGITS = 1000
MAX_ROOT_INDEX = 64
VARIABLES = frozenset("abcdfghjklmnpqrstuvwxyz")  # not e (a constant), i (imaginary), o (a unit)


class Unsupported(Exception):
    """Outside what this reader reads exactly as math-verify does: the answer is undecided."""


# ---------------------------------------------------------------------------- tree


@dataclass(frozen=True, slots=True)
class Num:
    value: Fraction
    decimal: bool = False  # written with a decimal point
    percent: bool = False  # written as `x\%` (already divided by 100)


@dataclass(frozen=True, slots=True)
class Const:
    name: str  # "pi" or "e"


@dataclass(frozen=True, slots=True)
class Var:
    name: str


@dataclass(frozen=True, slots=True)
class Neg:
    arg: Node


@dataclass(frozen=True, slots=True)
class Add:
    terms: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Mul:
    factors: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Div:
    num: Node
    den: Node


@dataclass(frozen=True, slots=True)
class Pow:
    base: Node
    exp: Node


@dataclass(frozen=True, slots=True)
class Root:
    arg: Node
    index: int


Node: TypeAlias = Num | Const | Var | Neg | Add | Mul | Div | Pow | Root


@dataclass(frozen=True, slots=True)
class Scalar:
    expr: Node


@dataclass(frozen=True, slots=True)
class Equation:
    var: str
    rhs: Node


@dataclass(frozen=True, slots=True)
class ConstantEquation:
    """`3 = 5`, `\\frac{10}{2} = 5`: an equation whose left side holds no variable."""

    lhs: Node
    rhs: Node


@dataclass(frozen=True, slots=True)
class Pair:
    """`(a, b, ...)`: a tuple, or for two items an open interval; either way compared in order."""

    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Interval:
    start: Node | None  # None: minus infinity
    end: Node | None  # None: plus infinity
    left_closed: bool
    right_closed: bool


@dataclass(frozen=True, slots=True)
class Union:
    parts: tuple[Interval, ...]


@dataclass(frozen=True, slots=True)
class FiniteSet:
    items: tuple[Node, ...]


Shape: TypeAlias = Scalar | Equation | ConstantEquation | Pair | Interval | Union | FiniteSet


# ---------------------------------------------------------------------------- tokens

_RAW = re.compile(r"\\[a-zA-Z]+|\\.|[0-9]+(?:\.[0-9]+)?|\s+|.", re.DOTALL)
_REFUSED_TEXT = re.compile(r"\d[eE][-+]?\d|\{\s*,\s*\}")  # 1e5, {,}
_THOUSANDS = re.compile(r"\d,\d{3}(?!\d)")  # a bare `1,234` is one number to math-verify
_DROPPED = frozenset({"\\left", "\\right", "\\,", "\\;", "\\:", "\\!", "\\ ", "$", "\\$"})
_RENAMED = {
    "\\dfrac": "\\frac",
    "\\tfrac": "\\frac",
    "\\cfrac": "\\frac",
    "\\cdot": "*",
    "\\times": "*",
    "%": "\\%",
}
_SYMBOLS = frozenset("+-*/^()[]{},=")
_DIGITS = frozenset("0123456789")
_COMMANDS = frozenset(
    {"\\frac", "\\sqrt", "\\pi", "\\infty", "\\cup", "\\{", "\\}", "\\%", "\\circ", "\\div"}
)
_OPENERS = frozenset({"(", "[", "{", "\\{"})
_CLOSERS = frozenset({")", "]", "}", "\\}"})
_DEGREES = (["^", "\\circ"], ["^", "{", "\\circ", "}"])


def _is_letter(token: str) -> bool:
    return len(token) == 1 and token.isascii() and token.isalpha()


def _is_number(token: str | None) -> bool:
    return token is not None and token[0] in _DIGITS


def tokenize(text: str, percent: str) -> list[str]:
    """The answer's tokens, spacing dropped; raises Unsupported on anything outside the subset."""
    if len(text) > MAX_CHARS or _REFUSED_TEXT.search(text):
        raise Unsupported
    tokens: list[str] = []
    previous = " "
    for raw in _RAW.findall(text):
        token = _RENAMED.get(raw, raw)
        if raw.isspace() or token in _DROPPED:
            previous = " "
            continue
        if _is_letter(token) and _is_letter(previous):
            raise Unsupported  # a word or a unit, which math-verify may rewrite or drop
        known = _is_number(token) or token in _SYMBOLS or token in _COMMANDS
        if not known and not (_is_letter(token) and (token in VARIABLES or token == "e")):
            raise Unsupported
        previous = token
        if not (token == "\\%" and percent == "ignore"):
            tokens.append(token)
    if len(tokens) > MAX_TOKENS:
        raise Unsupported
    return _without_degrees(tokens)


def _without_degrees(tokens: list[str]) -> list[str]:
    """Degree signs dropped, as math-verify drops them (`30^\\circ` is 30)."""
    out: list[str] = []
    index = 0
    while index < len(tokens):
        for sign in _DEGREES:
            if tokens[index : index + len(sign)] == sign:
                index += len(sign)
                break
        else:
            out.append(tokens[index])
            index += 1
    return out


# ---------------------------------------------------------------------------- whole answers


def parse_side(text: str, percent: str = "value") -> Shape:
    """One side of a comparison (a gold or a boxed answer) as a shape; raises Unsupported."""
    tokens = tokenize(text, percent)
    if not tokens:
        raise Unsupported
    sides = _split_top(tokens, "=")
    if len(sides) == 2:
        return _equation(sides[0], sides[1])
    if len(sides) > 2:
        raise Unsupported  # chains like a = b = 3
    pieces = _split_top(tokens, "\\cup")
    if len(pieces) > 1:
        return Union(tuple(_interval(piece) for piece in pieces))
    if tokens[0] == "\\{" and _closing(tokens) == len(tokens) - 1:
        inner = tokens[1:-1]
        return FiniteSet(tuple(expression(item) for item in _split_top(inner, ",")) if inner else ())
    if tokens[0] in ("(", "[") and _closing(tokens) == len(tokens) - 1 and "," in tokens:
        items = _split_top(tokens[1:-1], ",")
        if len(items) > 1:
            return _bracketed(tokens, items)
    items = _split_top(tokens, ",")
    if len(items) > 1:
        if _THOUSANDS.search(text):
            raise Unsupported
        return FiniteSet(tuple(expression(item) for item in items))  # math-verify: a set
    return Scalar(expression(tokens))


def _split_top(tokens: list[str], separator: str) -> list[list[str]]:
    """`tokens` split at `separator` where no bracket is open."""
    parts: list[list[str]] = [[]]
    depth = 0
    for token in tokens:
        if token in _OPENERS:
            depth += 1
        elif token in _CLOSERS:
            depth -= 1
        if token == separator and depth == 0:
            parts.append([])
        else:
            parts[-1].append(token)
    if depth != 0 or any(not part for part in parts):
        raise Unsupported
    return parts


def _closing(tokens: list[str]) -> int:
    """Index of the bracket that closes the first token (any kind: `[a, b)` is an interval)."""
    depth = 0
    for index, token in enumerate(tokens):
        depth += token in _OPENERS
        depth -= token in _CLOSERS
        if depth == 0:
            return index
    raise Unsupported


def _equation(left: list[str], right: list[str]) -> Equation | ConstantEquation:
    if len(left) == 1 and left[0] in VARIABLES:
        return Equation(left[0], expression(right))  # an assignment `v = ...`
    lhs = expression(left)
    if variables(lhs):
        raise Unsupported  # `2x + z = 5`: a relation, for math-verify (and the symbolic path's rule)
    return ConstantEquation(lhs, expression(right))


def _bracketed(tokens: list[str], items: list[list[str]]) -> Pair | Interval:
    infinite = any("\\infty" in item for item in items)
    if tokens[0] == "(" and tokens[-1] == ")" and not infinite:
        return Pair(tuple(expression(item) for item in items))
    return _interval(tokens)


def _interval(tokens: list[str]) -> Interval:
    """`[a, b)`-style intervals; in a union, `(a, b)` is an open interval too."""
    if tokens[0] not in ("(", "[") or tokens[-1] not in (")", "]") or _closing(tokens) != len(tokens) - 1:
        raise Unsupported
    items = _split_top(tokens[1:-1], ",")
    if len(items) != 2:
        raise Unsupported
    left, right = tokens[0] == "[", tokens[-1] == "]"
    start, end = _endpoint(items[0], -1), _endpoint(items[1], 1)
    if (start is None and left) or (end is None and right):
        raise Unsupported  # closed at infinity: math-verify silently opens it
    return Interval(start, end, left, right)


def _endpoint(tokens: list[str], side: int) -> Node | None:
    if tokens in (["\\infty"], ["+", "\\infty"]) and side > 0:
        return None
    if tokens == ["-", "\\infty"] and side < 0:
        return None
    return expression(tokens)


def expression(tokens: list[str]) -> Node:
    parser = _Parser(tokens)
    node = parser.expr()
    if parser.peek() is not None:
        raise Unsupported
    return node


# ---------------------------------------------------------------------------- expressions


class _Parser:
    """Recursive descent over math-verify's precedence: sums, then `/ \\cdot \\times`, then
    signs, then implicit products, then powers."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise Unsupported
        self.pos += 1
        return token

    def expect(self, token: str) -> None:
        if self.take() != token:
            raise Unsupported

    def expr(self) -> Node:
        terms = [self.term()]
        while self.peek() in ("+", "-"):
            sign = self.take()
            term = self.term()
            terms.append(term if sign == "+" else Neg(term))
        return terms[0] if len(terms) == 1 else Add(tuple(terms))

    def term(self) -> Node:
        node = self.unary()
        while self.peek() in ("*", "/", "\\div"):
            operator = self.take()
            right = self.unary()
            if operator != "*" and has_percent(right):
                raise Unsupported  # math-verify reads `a/10\%` as (a/10)/100
            if operator == "\\div" and isinstance(right, Mul):
                raise Unsupported  # math-verify does not parse `a \div b c`
            node = Mul((node, right)) if operator == "*" else Div(node, right)
        return node

    def unary(self) -> Node:
        negative = False
        while self.peek() in ("+", "-"):
            negative ^= self.take() == "-"
        node = self.chain()
        return Neg(node) if negative else node

    def chain(self) -> Node:
        factors = [self.power()]
        while self._starts_atom(self.peek()):
            if _is_number(self.peek()):
                raise Unsupported  # `x2`, `x^2 3`: only a leading number is read alike
            factors.append(self.power())
        if len(factors) > 1 and number_like(factors[-1]) and number_like(factors[-2]):
            raise Unsupported  # math-verify reads `2\frac{1}{2}` as 2 + 1/2 and `2(3)` as 5
        return factors[0] if len(factors) == 1 else Mul(tuple(factors))

    @staticmethod
    def _starts_atom(token: str | None) -> bool:
        if token is None:
            return False
        return _is_number(token) or _is_letter(token) or token in ("(", "{", "\\pi", "\\frac", "\\sqrt")

    def power(self) -> Node:
        base = self.atom()
        if self.peek() != "^":
            return base
        self.take()
        if isinstance(base, Num) and base.percent:
            raise Unsupported  # math-verify would raise only the 100
        exponent = self.exponent()
        if self.peek() == "^" or has_percent(exponent):
            raise Unsupported  # towers read right- or left-first depending on the form
        return Pow(base, exponent)

    def exponent(self) -> Node:
        token = self.peek()
        if token is not None and token.isdigit():
            return Num(Fraction(int(self.take())))
        if token in VARIABLES:
            return Var(self.take())
        if token == "{":
            return self.group("{", "}")
        raise Unsupported  # `x^-1` does not parse there

    def atom(self) -> Node:
        token = self.peek()
        if _is_number(token):
            return self.number(self.take())
        if token in VARIABLES:
            return Var(self.take())
        if token == "e":
            self.take()
            return Const("e")
        if token == "\\pi":
            self.take()
            return Const("pi")
        if token in ("(", "{"):
            return self.group(str(token), ")" if token == "(" else "}")
        if token == "\\frac":
            self.take()
            return self.fraction()
        if token == "\\sqrt":
            self.take()
            return self.root()
        raise Unsupported

    def number(self, token: str) -> Num:
        if len(token) > MAX_DIGITS:
            raise Unsupported
        value = Fraction(token)
        if self.peek() == "\\%":
            self.take()
            return Num(value / 100, "." in token, True)
        return Num(value, "." in token)

    def group(self, opener: str, closer: str) -> Node:
        self.expect(opener)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise Unsupported
        node = self.expr()
        self.expect(closer)
        self.depth -= 1
        return node

    def fraction(self) -> Node:
        token = self.peek() or ""
        if token.isdigit() and len(token) == 2:
            self.take()  # `\frac12`; longer runs (`\frac123` is 1/23 there) are refused
            return Div(Num(Fraction(int(token[0]))), Num(Fraction(int(token[1]))))
        return Div(self.group("{", "}"), self.group("{", "}"))

    def root(self) -> Node:
        if self.peek() == "[":
            self.take()
            index = self.take()
            if not index.isdigit() or not 2 <= int(index) <= MAX_ROOT_INDEX:
                raise Unsupported
            self.expect("]")
            return Root(self.group("{", "}"), int(index))
        token = self.peek() or ""
        if token.isdigit() and len(token) == 1:  # `\sqrt2`; `\sqrt12` is sqrt(1)*2 there
            return Root(Num(Fraction(int(self.take()))), 2)
        if token in VARIABLES:
            return Root(Var(self.take()), 2)
        return Root(self.group("{", "}"), 2)


# ---------------------------------------------------------------------------- tree queries


def children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Neg):
        return (node.arg,)
    if isinstance(node, Add):
        return node.terms
    if isinstance(node, Mul):
        return node.factors
    if isinstance(node, Div):
        return (node.num, node.den)
    if isinstance(node, Pow):
        return (node.base, node.exp)
    if isinstance(node, Root):
        return (node.arg,)
    return ()


def variables(node: Node) -> frozenset[str]:
    if isinstance(node, Var):
        return frozenset((node.name,))
    found: frozenset[str] = frozenset()
    for child in children(node):
        found |= variables(child)
    return found


def has_percent(node: Node) -> bool:
    if isinstance(node, Num):
        return node.percent
    return any(has_percent(child) for child in children(node))


def has_decimal(node: Node) -> bool:
    if isinstance(node, Num):
        return node.decimal
    return any(has_decimal(child) for child in children(node))


def number_like(node: Node) -> bool:
    """Could math-verify's parser hold this factor as a plain rational number? (Then it treats a
    product with it as a mixed fraction.) `\\sqrt{3}` cannot; `\\sqrt{4}` might."""
    if isinstance(node, Var | Const):
        return False
    if isinstance(node, Root) and isinstance(node.arg, Num) and node.index == 2:
        value = node.arg.value
        return value.denominator == 1 and value.numerator >= 0 and _is_square(value.numerator)
    return all(number_like(child) for child in children(node))


def _is_square(value: int) -> bool:
    return isqrt(value) ** 2 == value
