"""Exact numbers of the form sum c * sqrt(s) * pi^k * e^m (c rational, s squarefree, k, m integers).

Two such sums are equal exactly when their terms are: square roots of distinct squarefree
integers are linearly independent over the rationals, and pi and e are treated as independent
transcendentals, as SymPy treats them (it can prove no identity between them either). So
equality here is exact, not numeric. Every operation is bounded (terms, bits, radicand size);
past a bound, or for anything not in this field (cube roots of non-cubes, e^(1/2), a root of a
negative number), it raises Unsupported and the answer is undecided.

`numeric` gives a decimal value with a rigorous error bound, for inequalities and rounding.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from math import gcd, isqrt
from typing import TypeAlias

from verifier.fastmath.parse import Unsupported

Key: TypeAlias = tuple[int, int, int]  # (squarefree radicand, power of pi, power of e)
Terms: TypeAlias = dict[Key, Fraction]  # never mutated once built
ONE: Key = (1, 0, 0)
MAX_TERMS = 64
MAX_BITS = 1 << 17  # numerator or denominator of any coefficient
MAX_SQUAREFREE_BITS = 512
MAX_MULTI_TERM_POWER = 64
MAX_PI_E_POWER = 100_000
PRECISION = 60
_SMALL_PRIMES = [p for p in range(2, 1000) if all(p % q for q in range(2, isqrt(p) + 1))]
_BIG_PRIME_FLOOR = 1009  # the first prime above the trial-division limit
_PI = Decimal(
    "3.14159265358979323846264338327950288419716939937510582097494459230781640628620899862803482534211706798"
)
_ULP = Decimal(10) ** (1 - PRECISION)
_CONTEXT = decimal.Context(
    prec=PRECISION,
    Emax=10**8,
    Emin=-(10**8),
    traps=[decimal.InvalidOperation, decimal.Overflow, decimal.DivisionByZero, decimal.Underflow],
)


# ---------------------------------------------------------------------------- construction


def rational(value: Fraction) -> Terms:
    return {ONE: _fits(value)} if value else {}


def monomial(key: Key, value: Fraction) -> Terms:
    return {key: _fits(value)} if value else {}


def is_rational(terms: Terms) -> bool:
    return all(key == ONE for key in terms)


def as_rational(terms: Terms) -> Fraction | None:
    return terms.get(ONE, Fraction(0)) if is_rational(terms) else None


def _fits(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise Unsupported
    return value


def _built(terms: dict[Key, Fraction]) -> Terms:
    out = {key: _fits(value) for key, value in terms.items() if value}
    if len(out) > MAX_TERMS:
        raise Unsupported
    return out


# ---------------------------------------------------------------------------- arithmetic


def add(a: Terms, b: Terms) -> Terms:
    out = dict(a)
    for key, value in b.items():
        out[key] = out.get(key, Fraction(0)) + value
    return _built(out)


def negate(a: Terms) -> Terms:
    return {key: -value for key, value in a.items()}


def multiply(a: Terms, b: Terms) -> Terms:
    if len(a) * len(b) > MAX_TERMS * MAX_TERMS:
        raise Unsupported
    out: dict[Key, Fraction] = {}
    for (s1, k1, m1), c1 in a.items():
        for (s2, k2, m2), c2 in b.items():
            common = gcd(s1, s2)  # sqrt(s1) sqrt(s2) = common * sqrt(s1 s2 / common^2)
            key = ((s1 // common) * (s2 // common), k1 + k2, m1 + m2)
            out[key] = out.get(key, Fraction(0)) + _fits(c1 * c2) * common
    return _built(out)


def inverse(a: Terms) -> Terms:
    """1/a, rationalizing the denominator one prime radicand at a time (A + B√p times A - B√p
    is A² - pB², free of √p); a denominator with several pi/e powers left is Unsupported."""
    if not a:
        raise Unsupported  # division by zero: math-verify gives zoo or nan
    numerator, denominator = rational(Fraction(1)), a
    for _ in range(12):
        if len(denominator) == 1:
            return multiply(numerator, _monomial_inverse(denominator))
        prime = _radicand_prime(denominator)
        conjugate = {key: -value if key[0] % prime == 0 else value for key, value in denominator.items()}
        numerator, denominator = multiply(numerator, conjugate), multiply(denominator, conjugate)
    raise Unsupported


def _monomial_inverse(a: Terms) -> Terms:
    ((s, k, m), c) = next(iter(a.items()))
    return monomial((s, -k, -m), 1 / (c * s))  # 1/(c√s) = √s/(cs)


def _radicand_prime(terms: Terms) -> int:
    """A prime dividing one of the radicands (they are squarefree)."""
    for s, _, _ in terms:
        if s > 1:
            return _prime_factor(s)
    raise Unsupported  # e.g. 1/(1 + pi): not in the field


def _prime_factor(s: int) -> int:
    for prime in _SMALL_PRIMES:
        if s % prime == 0:
            return prime
    if s < _BIG_PRIME_FLOOR**2:
        return s  # no factor below its square root: prime
    raise Unsupported


def power(a: Terms, exponent: int) -> Terms:
    if exponent < 0:
        return power(inverse(a), -exponent)
    if not a:
        if exponent == 0:
            raise Unsupported  # 0^0
        return {}
    if len(a) == 1:
        return _monomial_power(a, exponent)
    if exponent > MAX_MULTI_TERM_POWER:
        raise Unsupported
    result, base = rational(Fraction(1)), a
    while exponent:
        if exponent & 1:
            result = multiply(result, base)
        exponent >>= 1
        if exponent:
            base = multiply(base, base)
    return result


def _monomial_power(a: Terms, exponent: int) -> Terms:
    ((s, k, m), c) = next(iter(a.items()))
    size = max(c.numerator.bit_length(), c.denominator.bit_length()) + s.bit_length()
    if size * exponent > MAX_BITS or max(abs(k), abs(m)) * exponent > MAX_PI_E_POWER:
        raise Unsupported  # checked before computing: the power itself would be the cost
    radicand = s if exponent % 2 else 1
    return monomial((radicand, k * exponent, m * exponent), c**exponent * s ** (exponent // 2))


def root(a: Terms, index: int) -> Terms:
    """The real index-th root of a non-negative rational; SymPy reads roots of negative numbers
    as complex principal roots, so those are Unsupported, as are non-rationals."""
    value = as_rational(a)
    if value is None or value < 0:
        raise Unsupported
    exact = _exact_root(value, index)
    if exact is not None:
        return rational(exact)
    half = _exact_root(value, index // 2) if index % 2 == 0 else None
    if half is None:
        raise Unsupported  # e.g. a cube root of 2: not in the field
    return _square_root(half)


def _exact_root(value: Fraction, index: int) -> Fraction | None:
    num, den = _integer_root(value.numerator, index), _integer_root(value.denominator, index)
    return None if num is None or den is None else Fraction(num, den)


def _integer_root(value: int, index: int) -> int | None:
    if value < 2 or index == 1:
        return value
    guess = 1 << -(-value.bit_length() // index)  # at least the root: Newton descends from above
    while True:
        better = ((index - 1) * guess + value // guess ** (index - 1)) // index
        if better >= guess:
            break
        guess = better
    return guess if guess**index == value else None


def _square_root(value: Fraction) -> Terms:
    outside, inside = square_split(value.numerator * value.denominator)
    return monomial((inside, 0, 0), Fraction(outside, value.denominator))  # √(n/d) = √(nd)/d


@functools.lru_cache(maxsize=4096)
def square_split(value: int) -> tuple[int, int]:
    """(a, s) with value = a² s and s squarefree, by trial division; Unsupported when a large
    remainder could hide a square factor."""
    if value.bit_length() > MAX_SQUAREFREE_BITS:
        raise Unsupported
    outside, inside = 1, 1
    for prime in _SMALL_PRIMES:
        if prime * prime > value:
            break
        count = 0
        while value % prime == 0:
            value //= prime
            count += 1
        outside *= prime ** (count // 2)
        inside *= prime ** (count % 2)
    return _big_remainder(value, outside, inside)


def _big_remainder(value: int, outside: int, inside: int) -> tuple[int, int]:
    """What is left has no prime factor below 1000: a square, a prime, or two distinct primes
    below 1009³; beyond that a p²q could hide."""
    if value == 1:
        return outside, inside
    top = isqrt(value)
    if top * top == value:
        return outside * top, inside
    if value < _BIG_PRIME_FLOOR**3:
        return outside, inside * value
    raise Unsupported


# ---------------------------------------------------------------------------- numeric value
# All decimal arithmetic runs in this module's own context: the caller's thread may have set its
# default context to any precision.


def numeric(terms: Terms) -> tuple[Decimal, Decimal]:
    """A decimal value and a bound on its absolute error, at PRECISION digits.

    Each term has relative error at most (|k| + |m| + 4) units in the last place (conversion,
    square root, powers of pi and e, products); each addition at most one more of the total.
    """
    with _decimals():
        total, weight = Decimal(0), Decimal(0)
        for key, coefficient in terms.items():
            value = _term(key, coefficient)
            total += value
            weight += abs(value) * (abs(key[1]) + abs(key[2]) + 4 + len(terms))
        return total, (weight + abs(total)) * _ULP


def certainly_apart(a: Terms, b: Terms, relative: Decimal) -> bool:
    """|a - b| > relative * max(|a|, |b|), whatever the rounding errors."""
    (va, ea), (vb, eb) = numeric(a), numeric(b)
    with _decimals():
        gap, error = abs(va - vb), ea + eb
        error += gap * _ULP
        return gap - error > relative * (max(abs(va), abs(vb)) + error)


def certainly_within(a: Terms, b: Terms, relative: Decimal) -> bool:
    """|a - b| <= relative * max(|a|, |b|), whatever the rounding errors."""
    (va, ea), (vb, eb) = numeric(a), numeric(b)
    with _decimals():
        gap, error = abs(va - vb), ea + eb
        error += gap * _ULP
        return gap + error <= relative * (max(abs(va), abs(vb)) - error)


def order(a: Terms, b: Terms) -> int:
    """-1, 0 or 1 for a < b, a = b, a > b; Unsupported when the error bounds overlap."""
    if a == b:
        return 0
    (va, ea), (vb, eb) = numeric(a), numeric(b)
    with _decimals():
        if abs(va - vb) <= (ea + eb) * 2:
            raise Unsupported
        return -1 if va < vb else 1


def rounded(terms: Terms, places: int) -> int:
    """round(value * 10^places); Unsupported when the error bound straddles a boundary."""
    value, error = numeric(terms)
    with _decimals():
        shifted, error = value.scaleb(places), error.scaleb(places) * 2
        floor = shifted.to_integral_value(rounding=decimal.ROUND_FLOOR)
        above = shifted - floor - Decimal("0.5")
        if abs(above) <= error:
            raise Unsupported
        return int(floor) + (1 if above > 0 else 0)


@contextlib.contextmanager
def _decimals() -> Iterator[None]:
    try:
        with decimal.localcontext(_CONTEXT):
            yield
    except (ArithmeticError, ValueError) as exc:
        raise Unsupported from exc  # overflow, a precision the bounds did not foresee


def _term(key: Key, coefficient: Fraction) -> Decimal:
    s, k, m = key
    value = Decimal(coefficient.numerator) / Decimal(coefficient.denominator)
    if s != 1:
        value *= Decimal(s).sqrt()
    if k:
        value *= (+_PI) ** k
    if m:
        value *= Decimal(1).exp() ** m
    return value
