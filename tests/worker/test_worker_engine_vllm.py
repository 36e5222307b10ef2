"""The vLLM engine: its logits processor logic runs on torch alone; loading vLLM needs a GPU box."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from conftest import make_job

from shared.protocol import BudgetForcing, SamplingParams
from shared.sampling import filtered_logprobs, sample_step
from worker.engines import vllm as vllm_engine
from worker.engines.vllm import EXTRA_KEY, _RowState, apply_batch_update, force_tokens

SWAP, ONE_WAY = "swap", "one-way"


def request(key: str, seed: int, output: list[int]) -> tuple[SimpleNamespace, list[int]]:
    sampling = SamplingParams(temperature=1.0, top_k=8, seed=seed).model_dump()
    params = SimpleNamespace(extra_args={EXTRA_KEY: {"key": key, "sample_index": 2, "sampling": sampling}})
    return params, output


def test_batch_updates_follow_adds_removes_and_moves() -> None:
    rows: dict[int, _RowState] = {}
    a, b, c = request("a", 1, []), request("b", 2, [5]), request("c", 3, [])
    plain = SimpleNamespace(extra_args=None)
    added = [(0, a[0], None, a[1]), (1, b[0], None, b[1]), (2, c[0], None, c[1]), (3, plain, None, [])]
    apply_batch_update(rows, SimpleNamespace(removed=[], added=added, moved=[]), SWAP)
    assert {i: r.key for i, r in rows.items()} == {0: "a", 1: "b", 2: "c"}
    apply_batch_update(
        rows, SimpleNamespace(removed=[1], added=[], moved=[(0, 2, SWAP), (2, 1, ONE_WAY)]), SWAP
    )
    # remove b; swap a<->c; move a from 2 to 1
    assert {i: r.key for i, r in rows.items()} == {0: "c", 1: "a"}


def test_force_tokens_leaves_only_the_seeded_sample() -> None:
    vllm_engine._RECORDS.clear()
    rows: dict[int, _RowState] = {}
    a, b = request("a", 10, [4, 4, 4]), request("b", 11, [])
    added = [(0, a[0], None, a[1]), (2, b[0], None, b[1])]
    apply_batch_update(rows, SimpleNamespace(removed=[], added=added, moved=[]), SWAP)
    logits = torch.randn(3, 50)
    original = logits.clone()
    forced = force_tokens(logits, rows)
    sampling = [rows[0].sampling, rows[2].sampling]
    tokens, logprobs = sample_step(torch, original[[0, 2]], [10, 11], [2, 2], [3, 0], sampling)
    assert torch.equal(forced[1], original[1])  # a request without our arguments is untouched
    for row, token in zip((0, 2), tokens.tolist(), strict=True):
        assert forced[row].argmax().item() == token
        assert torch.isfinite(forced[row]).sum().item() == 1
    assert vllm_engine._RECORDS["a"] == {3: (tokens[0].item(), pytest.approx(logprobs[0].item()))}
    assert vllm_engine._RECORDS["b"] == {0: (tokens[1].item(), pytest.approx(logprobs[1].item()))}


needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(), reason="needs vLLM and a GPU"
)


@needs_vllm
@pytest.mark.gpu
def test_vllm_engine_generates_seeded_tokens(tiny_model: str) -> None:
    engine = vllm_engine.VllmEngine.load(tiny_model, gpu_memory_utilization=0.3)
    prompt = "zq xv ## ?? 7 ~"  # out of distribution: the model stays uncertain, seeds matter
    jobs = [
        make_job(tiny_model, seed=s, max_tokens=8, prompt=prompt, temperature=1.5)
        for s in (1, 1, *range(2, 10))
    ]
    first, again, *others = engine.generate(jobs)
    assert first.completion_token_ids == again.completion_token_ids
    assert any(o.completion_token_ids != first.completion_token_ids for o in others)
    assert len(first.logprobs) == len(first.completion_token_ids)


def budget_request(key: str, budget: BudgetForcing, output: list[int]) -> tuple[SimpleNamespace, list[int]]:
    params, _ = request(key, 5, output)
    params.extra_args[EXTRA_KEY]["budget"] = {
        "rule": budget.model_dump(), "think_end_ids": [40, 41], "wait_ids": [30], "stops": [2],
    }  # fmt: skip
    return params, output


def step_rows(rows: dict[int, _RowState], logits: torch.Tensor) -> list[int]:
    """One engine step as vLLM runs it: the processor, then greedy, appended to each output."""
    forced = force_tokens(logits.clone(), rows)
    chosen = forced.argmax(dim=-1).tolist()
    for index, state in rows.items():
        state.output.append(chosen[index])
    return chosen


def test_budget_forcing_in_the_logits_processor() -> None:
    vllm_engine._RECORDS.clear()
    vllm_engine._BUDGETS.clear()
    rows: dict[int, _RowState] = {}
    capped = budget_request("cap", BudgetForcing(max_thinking_tokens=2), [])
    floor = budget_request("floor", BudgetForcing(min_thinking_tokens=3, max_waits=0), [])
    added = [(0, capped[0], None, capped[1]), (1, floor[0], None, floor[1])]
    apply_batch_update(rows, SimpleNamespace(removed=[], added=added, moved=[]), SWAP)
    logits = torch.randn(2, 50)
    logits[:, 2] = 50.0  # the end-of-sequence id is what the model wants most, everywhere
    steps = [step_rows(rows, logits) for _ in range(4)]
    # row 0 samples EOS at 0 (no minimum) and would stop there in vLLM; it shows the rule ran
    assert steps[0][0] == 2
    # row 1: EOS suppressed before the minimum (no waits), allowed from position 3 on
    assert 2 not in [s[1] for s in steps[:3]] and steps[3][1] == 2
    token, logprob = vllm_engine._RECORDS["floor"][0]
    suppressed = logits[1:2].clone()
    suppressed[0, 2] = float("-inf")  # the logprob is over the allowed set without EOS
    assert logprob == pytest.approx(float(filtered_logprobs(torch, suppressed, [rows[1].sampling])[0, token]))


def test_budget_max_forces_think_end_with_the_raw_logprob() -> None:
    vllm_engine._RECORDS.clear()
    vllm_engine._BUDGETS.clear()
    rows: dict[int, _RowState] = {}
    capped = budget_request("cap", BudgetForcing(max_thinking_tokens=2), [7, 8])  # two thinking tokens so far
    apply_batch_update(
        rows, SimpleNamespace(removed=[], added=[(0, capped[0], None, capped[1])], moved=[]), SWAP
    )
    budget = rows[0].budget
    assert budget is not None
    budget.advance(7)
    budget.advance(8)  # the engine had fed it the two tokens already emitted
    logits = torch.randn(1, 50)
    assert step_rows(rows, logits) == [40] and step_rows(rows, logits) == [41]  # think_end, forced
    raw = torch.log_softmax(logits[0].double(), -1)
    assert vllm_engine._RECORDS["cap"][2] == (40, pytest.approx(float(raw[40])))
    assert budget.thinking is False
