from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shared.protocol import VerifierSpec
from verifier import pool
from verifier.api import verify
from verifier.math import MAX_BOXED_CHARS, MAX_COMPLETION_CHARS, SERVICE, exact_value, latex_tokens
from verifier.pool import ServicePool, ServiceSpec
from verifier.procedural import SERVICE as RG_SERVICE


def check(gold: Any, answer: str, **config: Any) -> Any:
    return verify(VerifierSpec(kind="math", gold=gold, config=config), answer)


@pytest.mark.parametrize(
    ("gold", "answer"),
    [
        ("72", "Natalia sold 48 + 24 = 72 clips. \\boxed{72}"),
        (72, "\\boxed{72.0}"),
        (936, "\\boxed{936}"),
        ("1,000", "\\boxed{1000}"),
        ("\\frac{1}{2}", "\\boxed{0.5}"),
        ("\\dfrac{3}{4}", "\\boxed{\\frac{3}{4}}"),
        ("-\\frac{2}{6}", "\\boxed{-1/3}"),
        ("$12$", "\\boxed{ 12 }"),
        ("10\\%", "\\boxed{0.1}"),
    ],
)
def test_plain_numbers_take_the_exact_path(gold: Any, answer: str) -> None:
    verdict = check(gold, answer)
    assert verdict.passed and verdict.score == 1.0
    assert verdict.details["path"] == "exact"


@pytest.mark.parametrize(
    ("gold", "answer"),
    [
        ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\dfrac{ \\sqrt{3} }{2}}"),
        ("\\left(1, 2\\right]", "\\boxed{(1,2]}"),
        ("x^2 + 1", "\\boxed{x^2+1}"),
    ],
)
def test_the_same_expression_written_alike_needs_no_sympy(gold: str, answer: str) -> None:
    verdict = check(gold, answer)
    assert verdict.passed and verdict.details["path"] == "identical"


def test_token_comparison_keeps_command_names_apart() -> None:
    assert latex_tokens("\\pi r") != latex_tokens("\\pir")
    assert latex_tokens("10\\%") != latex_tokens("10")
    assert latex_tokens("10\\%", "ignore") == latex_tokens("10", "ignore")


@pytest.mark.parametrize(
    ("gold", "answer", "path"),
    [
        ("\\sqrt{2}", "\\boxed{\\frac{2}{\\sqrt{2}}}", "fast-symbolic"),
        ("x^2+2x+1", "\\boxed{(x+1)^2}", "fast-symbolic"),
        ("\\frac{1}{2^{99}}", "\\boxed{2^{-99}}", "fast-symbolic"),
        ("1-\\frac{1}{e}", "\\boxed{1-e^{-1}}", "fast-symbolic"),
        ("\\pi", "\\boxed{3.14159265}", "fast-symbolic"),
        ("\\{1,2\\}", "\\boxed{\\{2,1\\}}", "fast-symbolic"),
        ("\\frac{1}{\\sqrt{2}}", "\\boxed{\\frac{\\sqrt{2}}{2}}", "fast-symbolic"),
        # Outside the fast path's subset: math-verify decides.
        ("72", "\\boxed{72 \\text{ apples}}", "symbolic"),
        ("\\sqrt[3]{16}", "\\boxed{2\\sqrt[3]{2}}", "symbolic"),
        ("(1,2)", "\\boxed{1, 2}", "symbolic"),
    ],
)
def test_equivalent_forms_pass_the_symbolic_path(gold: str, answer: str, path: str) -> None:
    verdict = check(gold, answer)
    assert verdict.passed, verdict.reason
    assert verdict.details["path"] == path


@pytest.mark.parametrize(
    ("gold", "answer"),
    [
        # Known false positives of rule-based checkers (math-verify equates the first four).
        ("\\frac{1}{2^{99}}", "\\boxed{\\frac{1}{2^{98}}}"),
        ("10", "\\boxed{10\\%}"),
        ("10\\%", "\\boxed{10}"),
        ("0.1234567", "\\boxed{0.1234568}"),
        ("1-\\frac{1}{e}", "\\boxed{1+\\frac{1}{e}}"),
        ("1-\\frac{1}{e}", "\\boxed{1}"),  # an unanchored parse of this gold reads just "1"
        ("e^{-20}", "\\boxed{0}"),
        ("\\frac{1}{3}", "\\boxed{0.333333}"),
        ("3", "\\boxed{3, 4}"),
        ("3", "\\boxed{3 \\text{ or } 4}"),
        ("72", "\\boxed{\\pm 72}"),
    ],
)
def test_known_false_positives_are_rejected(gold: str, answer: str) -> None:
    verdict = check(gold, answer)
    assert verdict.score == 0.0 and not verdict.passed


@pytest.mark.parametrize(
    ("answer", "path"),
    [
        # An equation answer stands for its right side only as `name = value`: math-verify alone
        # compares the right side of any equation, so each of these scored 1 for the gold 5.
        ("3 = 5", "fast-symbolic"),
        ("5 = 5", "fast-symbolic"),
        ("\\frac{10}{2} = 5", "fast-symbolic"),
        ("e = 5", "fast-symbolic"),
        ("2x + z = 5", "symbolic"),
        ("x = 3 = 5", "symbolic"),
        ("xy = 5", "symbolic"),
        ("x \\leq 5", "symbolic"),
    ],
)
def test_an_equation_is_an_answer_only_as_name_equals_value(answer: str, path: str) -> None:
    verdict = check("5", "\\boxed{" + answer + "}")
    assert verdict.score == 0.0 and not verdict.passed, verdict
    assert verdict.details["path"] == path


@pytest.mark.parametrize("answer", ["x = 5", "a_{n} = 5", "\\alpha = 5", "f(x) = 5"])
def test_an_assignment_is_compared_by_its_value(answer: str) -> None:
    verdict = check("5", "\\boxed{" + answer + "}")
    assert verdict.passed, verdict.reason
    assert not check("6", "\\boxed{" + answer + "}").passed


def test_percent_can_be_ignored_for_datasets_that_drop_the_sign() -> None:
    assert check("10", "\\boxed{10\\%}", percent="ignore").passed
    assert not check("10", "\\boxed{10\\%}").passed


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("It is \\boxed{72} or maybe \\boxed{73}.", "more than one boxed answer"),
        ("The answer is 72.", "no \\boxed{} answer"),
        ("\\boxed{" + "1" * (MAX_BOXED_CHARS + 5) + "}", "boxed answer longer"),
        ("x" * (MAX_COMPLETION_CHARS + 1) + "\\boxed{72}", "completion longer"),
        ("\\boxed{10^{10^{10}}}", "exponent tower"),
        ("\\boxed{2^{99999999}}", "exponent too large"),
        ("\\boxed{100000!}", "factorial"),
        ("\\boxed{((5!)!)!}", "factorial"),
        ("\\boxed{" + "(" * 40 + "1" + ")" * 40 + "}", "nested too deeply"),
        ("\\boxed{\\sum_{k=1}^{10^9} k}", "not final answers"),
        ("\\boxed{" + "7" * 1200 + "}", "boxed answer longer"),
    ],
)
def test_malformed_and_slow_answers_are_rejected_with_a_reason(answer: str, reason: str) -> None:
    verdict = check("72", answer)
    assert verdict.score == 0.0 and reason in verdict.reason


def test_the_same_answer_boxed_twice_is_not_hedging() -> None:
    assert check("72", "so \\boxed{72}. Final: \\boxed{ 72 }").passed


def test_only_the_text_after_thinking_counts() -> None:
    assert check("72", "<think>maybe \\boxed{71}</think> The answer is \\boxed{72}").passed


def test_exact_values() -> None:
    assert exact_value("1{,}234") == 1234
    assert exact_value("\\frac{6}{8}") == exact_value("0.75")
    assert exact_value("12\\%") == exact_value("0.12")
    assert exact_value("x+1") is None


def test_code_in_an_answer_is_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    answer = f"\\boxed{{__import__('os').system('touch {marker}')}}"
    assert check("3", answer).score == 0.0
    assert not marker.exists()


def test_an_overrunning_check_is_killed_and_its_service_replaced() -> None:
    # Math runs in the service process itself, so an interrupted request ends that process.
    hasty = ServicePool(ServiceSpec(SERVICE.handler, timeout_s=0.001, memory_mb=2048, cpu_s=1.0), size=1)
    try:
        reply = hasty.call({"gold": "x^2+2x+1", "answer": "(x+1)^2"})
        assert reply.result is None and reply.failure == "timeout"
        slot = hasty._idle.get()
        assert slot is None or not slot.alive()
        hasty._idle.put(slot)
        assert hasty.call({"gold": "x^2+2x+1", "answer": "(x+1)^2"}).failure == "timeout"
    finally:
        hasty.close()


def test_an_overrunning_forked_request_leaves_its_service_running() -> None:
    # reasoning-gym requests run in forked children: killing one leaves the service as it was.
    hasty = ServicePool(ServiceSpec(RG_SERVICE.handler, timeout_s=0.5, memory_mb=4096, cpu_s=1.0), size=1)
    entry = {"answer": "1 + 2", "metadata": {"numbers": [1, 2], "target": 3}}
    payload = {"dataset": "countdown", "entry": entry, "answer": "9**9**9"}  # a 370-million-digit number
    try:
        assert hasty.call(payload).failure == "timeout"
        slot = hasty._idle.get()
        assert slot is not None and slot.alive()
        hasty._idle.put(slot)
    finally:
        hasty.close()


def test_a_dead_service_is_replaced() -> None:
    # A cube root of a non-cube is outside the fast path, so these reach the service.
    assert check("\\sqrt[3]{16}", "\\boxed{2\\sqrt[3]{2}}").details["path"] == "symbolic"
    service_pool = pool.get_pool(SERVICE)
    services = [service_pool._idle.get() for _ in range(service_pool.size)]
    for service in services:
        if service is not None:
            os.killpg(service.sandbox.proc.pid, signal.SIGKILL)
        service_pool._idle.put(service)
    assert check("\\sqrt[3]{16}", "\\boxed{2\\sqrt[3]{2}}").passed


def test_verify_is_safe_from_many_threads_at_once() -> None:
    cases = [
        ("x^2-1", "\\boxed{(x-1)(x+1)}", True),  # the fast path
        ("x^2-1", "\\boxed{(x-1)^2}", False),
        ("\\sqrt[3]{16}", "\\boxed{2\\sqrt[3]{2}}", True),  # the service pool
        ("\\sqrt[3]{16}", "\\boxed{\\sqrt[3]{2}}", False),
    ] * 3
    with ThreadPoolExecutor(max_workers=4) as workers:
        verdicts = list(workers.map(lambda c: check(c[0], c[1]), cases))
    assert [v.passed for v in verdicts] == [c[2] for c in cases]
