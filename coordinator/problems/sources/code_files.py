"""Code problems from JSONL files in the layouts they are published in (docs/problems.md):

- `apps`: APPS rows (`problem_id`, `question`, `input_output`, `starter_code`, `difficulty`),
  stdin/stdout style;
- `codecontests`: CodeContests rows (`name`, `description`, `public_tests`, `private_tests`,
  `generated_tests`, `time_limit`, `memory_limit_bytes`), stdin/stdout style;
- `mbpp`: MBPP rows, original or sanitized (`task_id`, `text` or `prompt`, `code`, `test_list`),
  function-call style; the tests are derived from the asserts in the sandbox when the set is stored
  (verifier.code.spec_from_mbpp), as HumanEval's are.

Every row becomes a `code` problem whose tests live only in its hidden verifier spec.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from coordinator.errors import ValidationFailed
from coordinator.problems.sources.options import parse_options
from shared.protocol import ProblemIn

Format = Literal["apps", "codecontests", "mbpp"]
TestGroup = Literal["public", "private", "generated"]
MBPP_RECORD = ("task_id", "code", "test_list", "test_setup_code", "test_imports")
LANGUAGE_NAMES = {"python": "Python 3", "cpp": "C++17"}


class CodeOptions(BaseModel):
    """`options` of a `code` problem set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Format
    language: Literal["python", "cpp"] = Field(default="python", description="stdio formats only")
    compare: Literal["lines", "tokens", "exact"] = "lines"
    time_limit_s: float | None = Field(default=None, description="default: the row's, else 2 s")
    memory_mb: int | None = Field(default=None, description="default: the row's, else 512 MiB")
    tests: tuple[TestGroup, ...] = Field(default=("public", "private", "generated"), min_length=1)
    skip_call_based: bool = Field(default=False, description="apps: leave out rows with fn_name")

    @classmethod
    def parse(cls, options: dict[str, Any]) -> CodeOptions:
        return parse_options(cls, options, "code")


def problem(options: CodeOptions, line: str) -> ProblemIn | None:
    """One JSONL line as a problem, or None for a row the options leave out (APPS call-based rows
    under skip_call_based); ValidationFailed names the bad field."""
    row = json.loads(line)
    if not isinstance(row, dict):
        raise ValidationFailed(f"a {options.format} row must be a JSON object")
    if options.format == "apps":
        return _apps(options, row)
    if options.format == "codecontests":
        return _codecontests(options, row)
    return _mbpp(row)


def _instruction(language: str) -> str:
    name = LANGUAGE_NAMES[language]
    return (
        f"\n\nWrite a {name} program that reads the input from standard input and writes the answer "
        f"to standard output. Reply with the whole program in a ```{language} block."
    )


def _stdio_problem(
    options: CodeOptions, ident: str, statement: str, tests: list[dict[str, str]], limits: dict[str, Any]
) -> ProblemIn:
    if not tests:
        raise ValidationFailed("the row has no tests")
    spec: dict[str, Any] = {"language": options.language, "style": "stdio", "tests": tests}
    spec["compare"] = options.compare
    spec.update({k: v for k, v in limits.items() if v is not None})
    metadata = {"source": options.format, "tests": len(tests)}
    prompt = statement.strip() + _instruction(options.language)
    return ProblemIn(id=ident, prompt=prompt, answer=spec, verifier="code", metadata=metadata)


# ---------------------------------------------------------------------------- APPS


def _apps(options: CodeOptions, row: dict[str, Any]) -> ProblemIn | None:
    statement = _text(row, "question")
    cases = row.get("input_output")
    if isinstance(cases, str):
        try:
            cases = json.loads(cases) if cases.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValidationFailed(f"input_output: not JSON: {exc}") from exc
    if not isinstance(cases, dict):
        raise ValidationFailed("input_output: must be an object with 'inputs' and 'outputs'")
    if cases.get("fn_name"):
        if options.skip_call_based:
            return None
        raise ValidationFailed(
            "call-based APPS rows (input_output.fn_name) are not supported; "
            'pass the option {"skip_call_based": true} to leave them out'
        )
    tests = _pairs(cases.get("inputs"), cases.get("outputs"), "input_output.inputs", "input_output.outputs")
    starter = row.get("starter_code") or ""
    if not isinstance(starter, str):
        raise ValidationFailed("starter_code: must be a string")
    statement += f"\n\n{starter}" if starter.strip() else ""
    ident = f"apps-{_ident(row, 'problem_id')}"
    limits = {"time_limit_s": options.time_limit_s, "memory_mb": options.memory_mb}
    built = _stdio_problem(options, ident, statement, tests, limits)
    return _with_difficulty(built, row)


def _pairs(inputs: Any, outputs: Any, in_name: str, out_name: str) -> list[dict[str, str]]:
    """stdin/stdout tests from parallel lists; an output given as a list of lines is joined."""
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise ValidationFailed(f"{in_name} and {out_name} must be lists")
    if len(inputs) != len(outputs):
        raise ValidationFailed(f"{in_name} has {len(inputs)} entries but {out_name} has {len(outputs)}")
    return [
        {"stdin": _case(given, f"{in_name}[{i}]"), "stdout": _case(wanted, f"{out_name}[{i}]")}
        for i, (given, wanted) in enumerate(zip(inputs, outputs, strict=True))
    ]


def _case(value: Any, where: str) -> str:
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        return "\n".join(value) + "\n"
    if not isinstance(value, str):
        raise ValidationFailed(f"{where}: must be a string (or a list of lines), not {type(value).__name__}")
    return value


def _with_difficulty(problem: ProblemIn, row: dict[str, Any]) -> ProblemIn:
    difficulty = row.get("difficulty")
    if isinstance(difficulty, str | int) and not isinstance(difficulty, bool):
        return problem.model_copy(update={"metadata": {**problem.metadata, "difficulty": difficulty}})
    return problem


# ---------------------------------------------------------------------------- CodeContests


def _codecontests(options: CodeOptions, row: dict[str, Any]) -> ProblemIn:
    statement = _text(row, "description")
    tests: list[dict[str, str]] = []
    for group in options.tests:
        field = f"{group}_tests"
        cases = row.get(field) or {"input": [], "output": []}
        if not isinstance(cases, dict):
            raise ValidationFailed(f"{field}: must be an object with 'input' and 'output'")
        tests += _pairs(cases.get("input"), cases.get("output"), f"{field}.input", f"{field}.output")
    limits = {
        "time_limit_s": options.time_limit_s or _time_limit(row.get("time_limit")),
        "memory_mb": options.memory_mb or _memory_mb(row.get("memory_limit_bytes")),
    }
    built = _stdio_problem(options, f"cc-{_ident(row, 'name')}", statement, tests, limits)
    return _with_difficulty(built, row)


def _time_limit(value: Any) -> float | None:
    """CodeContests' `{"seconds", "nanos"}` (zero or absent: unspecified), within the verifier's
    accepted range."""
    if not isinstance(value, dict):
        return None
    seconds = float(value.get("seconds") or 0) + float(value.get("nanos") or 0) / 1e9
    return min(60.0, max(0.05, seconds)) if seconds > 0 else None


def _memory_mb(value: Any) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return None
    return min(8192, max(64, math.ceil(value / (1 << 20))))


# ---------------------------------------------------------------------------- MBPP


def _mbpp(row: dict[str, Any]) -> ProblemIn:
    from verifier.code import mbpp_task
    from verifier.errors import SpecError

    statement = _text(row, "text" if "text" in row else "prompt")
    try:
        task = mbpp_task(row)
    except SpecError as exc:
        raise ValidationFailed(str(exc)) from exc
    prompt = (
        f"{statement.strip()}\nYour code should pass this test:\n{task.asserts[0]}\n\n"
        "Reply with the whole function in a ```python block."
    )
    record = {k: row[k] for k in MBPP_RECORD if k in row}
    metadata = {"source": "mbpp", "record": record, "entry_point": task.entry_point}
    return ProblemIn(id=f"mbpp-{_ident(row, 'task_id')}", prompt=prompt, verifier="code", metadata=metadata)


# ---------------------------------------------------------------------------- fields


def _text(row: dict[str, Any], field: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed(f"{field}: must be a non-empty string")
    return value


def _ident(row: dict[str, Any], field: str) -> str:
    value = row.get(field)
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
        raise ValidationFailed(f"{field}: must be a string or an integer (the problem's id)")
    return str(value)
