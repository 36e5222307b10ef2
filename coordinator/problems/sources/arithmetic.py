"""Procedural multi-digit arithmetic: the task the bundled tiny model is trained on.

Problems are a pure function of (seed, index), so a problem set can be rebuilt anywhere and
train/test splits never overlap: the split picks a disjoint seed stream.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

SPLIT_SALT = {"train": 0x5EED_0001, "test": 0x5EED_0002, "validation": 0x5EED_0003}
OPS = ("+", "-", "*")


@dataclass(frozen=True)
class ArithmeticProblem:
    id: str
    a: int
    b: int
    op: str

    @property
    def prompt(self) -> str:
        return f"What is {self.a} {self.op} {self.b}?"

    @property
    def answer(self) -> int:
        if self.op == "+":
            return self.a + self.b
        if self.op == "-":
            return self.a - self.b
        return self.a * self.b


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def make_problem(seed: int, index: int, split: str = "test", max_digits: int = 4) -> ArithmeticProblem:
    rng = random.Random((SPLIT_SALT[split] << 40) ^ (seed << 20) ^ index)
    op = rng.choice(OPS)
    # Multiplication is kept smaller: a long product is much harder than a long sum.
    top = max_digits if op != "*" else max(1, max_digits - 1)
    a = _operand(rng, rng.randint(1, top))
    b = _operand(rng, rng.randint(1, 2 if op == "*" else top))
    return ArithmeticProblem(id=f"arith-{split}-{seed}-{index}", a=a, b=b, op=op)


def generate(
    count: int, seed: int = 0, split: str = "test", max_digits: int = 4
) -> Iterator[ArithmeticProblem]:
    if split not in SPLIT_SALT:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SALT)}")
    for index in range(count):
        yield make_problem(seed, index, split, max_digits)
