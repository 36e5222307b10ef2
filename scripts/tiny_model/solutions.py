"""Worked solutions the tiny model learns to write, and the answer check used to score it.

The chain of thought works column by column from the least significant digit, the order in which
carries and borrows become known, so each step needs only the digits it names and the carry of
the step before. The final answer is the integer in the last ``\\boxed{...}``.
"""

from __future__ import annotations


def _digit(number: int, place: int) -> int:
    return (number // 10**place) % 10


def add_columns(x: int, y: int) -> str:
    """Column addition of two non-negative integers: ``x+y+carry=sum`` per column."""
    steps: list[str] = []
    carry = 0
    for place in range(max(len(str(x)), len(str(y)))):
        dx, dy = _digit(x, place), _digit(y, place)
        total = dx + dy + carry
        steps.append(f"{dx}+{dy}+{carry}={total}")
        carry = total // 10
    return " ".join(steps)


def subtract_columns(x: int, y: int) -> str:
    """Column subtraction for ``x >= y >= 0``: a borrowed column shows its top digit plus ten."""
    steps: list[str] = []
    borrow = 0
    for place in range(len(str(x))):
        dx, dy = _digit(x, place), _digit(y, place)
        top = dx + 10 if dx - dy - borrow < 0 else dx
        steps.append(f"{top}-{dy}-{borrow}={top - dy - borrow}")
        borrow = 1 if top > dx else 0
    return " ".join(steps)


def multiply_steps(x: int, y: int) -> str:
    """One partial product per digit of ``y``, then the shifted partials summed in columns."""
    digits = [int(d) for d in reversed(str(y))]
    steps = [f"{x}*{d}={x * d}" for d in digits]
    total = x * digits[0]
    for place, d in enumerate(digits[1:], start=1):
        shifted = x * d * 10**place
        steps.append(f"{total}+{shifted}: {add_columns(total, shifted)}")
        total += shifted
    return " ".join(steps)


def worked_solution(a: int, op: str, b: int) -> str:
    """The full completion for ``a op b`` (non-negative operands), ending in the boxed answer."""
    if op == "+":
        work, answer = add_columns(a, b), a + b
    elif op == "-":
        answer = a - b
        work = subtract_columns(a, b) if a >= b else f"-({b}-{a}) {subtract_columns(b, a)}"
    elif op == "*":
        work, answer = multiply_steps(a, b), a * b
    else:
        raise ValueError(f"unsupported operator {op!r}")
    return f"{work} \\boxed{{{answer}}}"


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text``, braces balanced; None when absent."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            if depth == 0:
                return text[begin:index]
            depth -= 1
    return None


def boxed_int(text: str) -> int | None:
    """The last boxed answer as an integer, or None when it is missing or not an integer."""
    content = last_boxed(text)
    if content is None:
        return None
    try:
        return int(content.strip())
    except ValueError:
        return None


def is_correct(text: str, gold: int) -> bool:
    return boxed_int(text) == gold
