from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import reasoning_gym

from shared.protocol import VerifierSpec
from verifier.api import verify
from verifier.procedural import extract_answer
from verifier.scoring import safe_eval


def entry(dataset: str, seed: int = 3) -> dict[str, Any]:
    item = reasoning_gym.create_dataset(dataset, size=1, seed=seed)[0]
    return dict(json.loads(json.dumps(item, default=str)))  # as the coordinator stores it


def spec(dataset: str, item: dict[str, Any]) -> VerifierSpec:
    return VerifierSpec(kind="reasoning_gym", gold=item["answer"], config={"dataset": dataset, "entry": item})


@pytest.mark.parametrize(
    "dataset", ["basic_arithmetic", "spiral_matrix", "countdown", "polynomial_multiplication"]
)
def test_reference_answers_pass_and_wrong_ones_fail(dataset: str) -> None:
    item = entry(dataset)
    good = verify(spec(dataset, item), f"Let me think.\n<answer>{item['answer']}</answer>")
    bad = verify(spec(dataset, item), "<answer>certainly not this</answer>")
    assert good.passed and good.score == 1.0, good.reason
    assert not bad.passed and bad.score < 1.0


def test_answer_extraction() -> None:
    assert extract_answer("<answer>1</answer> then <answer> 2 </answer>") == "2"
    assert extract_answer("so \\boxed{7}") == "7"
    assert extract_answer("<think><answer>1</answer></think> nothing") is None


def test_bad_specs_and_missing_answers_give_reasons() -> None:
    item = entry("basic_arithmetic")
    assert "no <answer>" in verify(spec("basic_arithmetic", item), "I give up").reason
    unknown = verify(
        VerifierSpec(kind="reasoning_gym", config={"dataset": "no_such", "entry": item}), "<answer>1</answer>"
    )
    assert unknown.score == 0.0 and "unknown" in unknown.reason
    malformed = verify(VerifierSpec(kind="reasoning_gym", config={"dataset": 3}), "<answer>1</answer>")
    assert malformed.score == 0.0 and "config.dataset" in malformed.reason


FORGERY = "__import__('os').write(3, b'{\"score\": 1.0}') and __import__('os')._exit(0)"


def test_an_answer_that_runs_code_in_an_eval_based_scorer_cannot_forge_its_score(tmp_path: Path) -> None:
    item = entry("spiral_matrix")
    # Control: spiral_matrix's scorer really does eval() the answer, so the attack is live.
    marker = tmp_path / "ran"
    probe = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    script = (
        "import json, sys, reasoning_gym\n"
        "item = json.loads(sys.argv[1])\n"
        "reasoning_gym.get_score_answer_fn('spiral_matrix')(sys.argv[2], item)\n"
    )
    subprocess.run([sys.executable, "-c", script, json.dumps(item), probe], check=True, timeout=120)
    assert marker.exists()
    verdict = verify(spec("spiral_matrix", item), f"<answer>{FORGERY}</answer>")
    assert verdict.score == 0.0 and not verdict.passed


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "().__class__",
        "exec(chr(49))",
        "[x for x in (1,)]",
        "(lambda: 1)()",
        "getattr(1, 'real')",
    ],
)
def test_the_eval_guard_refuses_code(text: str) -> None:
    with safe_eval.installed(), pytest.raises(safe_eval.UnsafeExpression):
        eval(text)


def test_the_eval_guard_allows_data_and_sympy() -> None:
    import sympy

    with safe_eval.installed():
        assert eval("[[1, 2], [3, -4.5]]") == [[1, 2], [3, -4.5]]
        assert sympy.parse_expr("2*x**2 + 3") == sympy.Symbol("x") ** 2 * 2 + 3


def test_entries_can_be_regenerated_from_seed_and_index() -> None:
    # arc_agi's metadata holds tuples, which a JSON round trip turns into lists: its scorer then
    # rejects even the reference answer. Regenerating the item inside the service keeps the types.
    item = reasoning_gym.create_dataset("arc_agi", size=3, seed=7)[2]
    regenerated = VerifierSpec(
        kind="reasoning_gym", config={"dataset": "arc_agi", "seed": 7, "size": 3, "index": 2}
    )
    assert verify(regenerated, f"<answer>{item['answer']}</answer>").passed
    assert not verify(regenerated, "<answer>0</answer>").passed
    out_of_range = VerifierSpec(
        kind="reasoning_gym", config={"dataset": "arc_agi", "seed": 7, "size": 3, "index": 3}
    )
    assert "index < size" in verify(out_of_range, "<answer>0</answer>").reason
