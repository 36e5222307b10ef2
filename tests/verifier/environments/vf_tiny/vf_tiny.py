"""A single-turn verifiers environment in the Environments Hub layout: `load_environment(**args)`.

Sums of two numbers, built locally (no dataset download); two named reward functions."""

from __future__ import annotations

import re
from typing import Any

import verifiers as vf
from datasets import Dataset

SYSTEM = "Answer with the number in \\boxed{}."


def _rows(start: int, count: int) -> Dataset:
    pairs = [(start + i, 2 * (start + i) + 1) for i in range(count)]
    return Dataset.from_dict(
        {
            "question": [f"What is {a} + {b}?" for a, b in pairs],
            "answer": [str(a + b) for a, b in pairs],
            "info": [{"a": a, "b": b} for a, b in pairs],
        }
    )


def _boxed(text: str) -> str | None:
    found = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return found[-1].strip() if found else None


def correct_answer(completion: Any, answer: str, parser: vf.Parser, **kwargs: Any) -> float:
    return 1.0 if parser.parse_answer(completion) == answer else 0.0


def boxed_format(completion: Any, parser: vf.Parser, **kwargs: Any) -> float:
    return 1.0 if parser.parse_answer(completion) is not None else 0.0


def evaluated(completion: Any, answer: str, parser: vf.Parser, **kwargs: Any) -> float:
    """Evaluates the answer as Python, as some environments' rewards do (a sandbox's concern)."""
    parsed = parser.parse_answer(completion)
    return 1.0 if parsed is not None and str(eval(parsed)) == answer else 0.0


FEW_SHOT = [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "\\boxed{2}"}]


def load_environment(
    train_size: int = 6,
    eval_size: int = 3,
    format_weight: float = 0.2,
    evaluate: bool = False,
    few_shot: bool = False,
) -> vf.Environment:
    parser = vf.Parser(extract_fn=_boxed)
    funcs, weights = [correct_answer, boxed_format], [1.0, format_weight]
    if evaluate:
        funcs, weights = [*funcs, evaluated], [*weights, 0.0]
    rubric = vf.Rubric(funcs=funcs, weights=weights, parser=parser)
    return vf.SingleTurnEnv(
        dataset=_rows(0, train_size),
        eval_dataset=_rows(100, eval_size),
        system_prompt=SYSTEM,
        few_shot=FEW_SHOT if few_shot else None,
        parser=parser,
        rubric=rubric,
    )
