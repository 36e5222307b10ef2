from __future__ import annotations

from typing import Any

import pytest

from shared.protocol import VerifierSpec
from verifier.api import check_available, verify


def test_check_available_reports_a_working_sandbox() -> None:
    info = check_available()
    assert info["bwrap"] and info["python"]
    assert "65534" in str(info["sandbox"])


PY = "```python\nprint(1)\n```"


@pytest.mark.parametrize(
    ("kind", "gold", "config", "answer"),
    [
        ("math", None, {}, "\\boxed{1}"),
        ("math", {"weird": 1}, {}, "\\boxed{1}"),
        ("math", "72", {"percent": 5}, "\\boxed{72\\%}"),
        ("math", "72", {}, "\x00\\boxed{\x00}" * 3),
        ("math", "72", {}, "\\boxed{" * 1000),
        ("math", "72", {}, "\\boxed{\\frac{}{}}"),
        ("reasoning_gym", None, {"dataset": "basic_arithmetic", "entry": {}}, "<answer>1</answer>"),
        ("reasoning_gym", None, {"dataset": "leg_counting", "entry": {"answer": 3}}, "<answer>\ud800"),
        ("code", None, {"tests": [{"stdin": 5, "stdout": None}]}, PY),
        ("code", None, {"style": "call", "entry_point": "f", "tests": [{"args": {"$x": 1}}]}, PY),
        ("code", None, {"tests": [{}], "time_limit_s": "soon"}, PY),
    ],
)
def test_bad_input_never_raises(kind: str, gold: Any, config: dict[str, Any], answer: str) -> None:
    verdict = verify(VerifierSpec(kind=kind, gold=gold, config=config), answer)
    assert 0.0 <= verdict.score <= 1.0
    if not verdict.passed:
        assert verdict.reason


def test_a_non_text_answer_is_a_reasoned_zero() -> None:
    verdict = verify(VerifierSpec(kind="math", gold="1"), None)  # type: ignore[arg-type]
    assert verdict.score == 0.0 and "not text" in verdict.reason
