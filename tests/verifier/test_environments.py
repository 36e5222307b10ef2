"""docs/verifiers.md "verifiers environments": an installed environment's tasks are listed and its
reward functions score completions inside the sandbox, never in the calling process; each reward
function's value is in the verdict; multi-turn environments are refused."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.protocol import VerifierSpec
from tests.verifier.environment_venv import environment_python, sandbox_python
from verifier.api import verify
from verifier.environments import tasks
from verifier.errors import SpecError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def python() -> Iterator[Path]:
    with environment_python() as path:
        yield path


@pytest.fixture
def in_sandbox(python: Path) -> Iterator[None]:
    with sandbox_python(python):
        yield


def _spec(row: dict[str, Any], **args: Any) -> VerifierSpec:
    return VerifierSpec(kind="verifiers", config={"environment": "vf-tiny", "args": args, "row": row})


def test_tasks_are_listed_and_rewards_computed_in_the_sandbox_only(in_sandbox: None) -> None:
    assert importlib.util.find_spec("vf_tiny") is None  # this process cannot even import it
    rows = tasks("vf-tiny", {"eval_size": 250}, "eval", None)  # more than one page of tasks
    assert len(rows) == 250 and [r["example_id"] for r in rows] == list(range(250))
    first = rows[0]
    assert first["answer"] == "301" and first["info"] == {"a": 100, "b": 201}
    assert [m["role"] for m in first["prompt"]] == ["system", "user"]
    assert len(tasks("vf-tiny", {}, "train", 4)) == 4
    right = verify(_spec(first), "100 + 201 is \\boxed{301}")
    assert right.passed and right.score == 1.0
    assert right.details == {
        "environment": "vf-tiny",
        "reward": 1.2,
        "rewards": {"correct_answer": 1.0, "boxed_format": 1.0},
    }
    wrong = verify(_spec(first), "\\boxed{300}")
    assert not wrong.passed and wrong.score == pytest.approx(0.2)
    assert wrong.details["rewards"] == {"correct_answer": 0.0, "boxed_format": 1.0}
    assert "below the environment's pass threshold 0.5" in wrong.reason
    unformatted = verify(_spec(first, format_weight=0.5), "301")
    assert unformatted.score == 0.0 and unformatted.details["rewards"]["boxed_format"] == 0.0
    assert "vf_tiny" not in sys.modules


def test_multi_turn_and_missing_environments_are_refused_with_the_reason(in_sandbox: None) -> None:
    with pytest.raises(SpecError, match="EchoEnv is not a SingleTurnEnv: multi-turn and tool"):
        tasks("vf-tiny-chat", {}, "eval", None)
    with pytest.raises(SpecError, match="could not be loaded: ValueError: Could not import 'vf-nowhere'"):
        tasks("vf-nowhere", {}, "eval", None)
    with pytest.raises(SpecError, match="got an unexpected keyword argument 'sizes'"):
        tasks("vf-tiny", {"sizes": 3}, "eval", None)
    row = {"prompt": [{"role": "user", "content": "Say hi."}], "answer": "hi"}
    spec = VerifierSpec(kind="verifiers", config={"environment": "vf-tiny-chat", "row": row})
    verdict = verify(spec, "hi")
    assert verdict.score == 0.0 and "multi-turn and tool environments are not supported" in verdict.reason
    assert (
        "config.row" in verify(VerifierSpec(kind="verifiers", config={"environment": "vf-tiny"}), "x").reason
    )


def test_a_completion_cannot_run_code_through_a_reward_function(in_sandbox: None) -> None:
    """The tiny environment's `evaluated` reward evaluates the answer (as some environments do): under
    the eval guard an answer that is code scores nothing, while plain arithmetic still evaluates."""
    row = tasks("vf-tiny", {"evaluate": True}, "eval", 1)[0]
    spec = _spec(row, evaluate=True)
    forged = "\\boxed{__import__('os').system('true') or 301}"
    assert verify(spec, forged).details["rewards"]["evaluated"] == 0.0
    assert verify(spec, "\\boxed{300 + 1}").details["rewards"]["evaluated"] == 1.0
