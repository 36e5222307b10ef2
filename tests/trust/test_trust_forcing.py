"""The validator's copy of the budget-forcing rule is the worker's rule: same decisions on random
token streams, and budget-forced traces from the worker's engine pass re-scoring."""

from __future__ import annotations

import random
from typing import Any

import pytest

from coordinator.trust import forcing
from coordinator.trust.models_cache import Scorer
from shared.protocol import BudgetForcing, JobSpec
from tests.trust.helpers import PROBLEMS, claim, make_job, outcomes
from worker import budget as worker_budget
from worker.engines.hf import TransformersEngine

END, WAIT, STOPS = (7, 8, 9), (5, 6), frozenset({2})
BOXED = "\\boxed{"


def _drive(module: object, budget: BudgetForcing, stream: list[int]) -> list[tuple[object, ...]]:
    """Feed a token stream through a module's controller; the log of every decision."""
    tokens = module.BudgetTokens(think_end=END, wait=WAIT, stops=STOPS)  # type: ignore[attr-defined]
    state = module.BudgetState(budget, tokens)  # type: ignore[attr-defined]
    log: list[tuple[object, ...]] = []
    for candidate in stream:
        step = state.step()
        if step.forced is not None:
            token = step.forced
        elif candidate in step.watch:
            token = state.start_wait()
        else:
            token = candidate if candidate not in step.suppress else 1
        log.append((step.forced, sorted(step.suppress), sorted(step.watch), token))
        state.advance(token)
    return log


@pytest.mark.parametrize("seed", range(40))
def test_the_copies_decide_alike(seed: int) -> None:
    rng = random.Random(seed)
    budget = BudgetForcing(
        min_thinking_tokens=rng.randrange(0, 30),
        max_thinking_tokens=rng.choice([None, rng.randrange(1, 40)]),
        max_waits=rng.randrange(0, 3),
    )
    stream = [rng.choice([1, 3, 4, 5, 6, 7, 8, 9, 2]) for _ in range(60)]
    assert _drive(forcing, budget, stream) == _drive(worker_budget, budget, stream)
    assert forcing.thinking_length(stream, END) == worker_budget.thinking_length(stream, END)


@pytest.mark.parametrize(
    ("budget", "sampling"),
    [
        (
            BudgetForcing(think_end="\\", min_thinking_tokens=70, max_waits=2),
            {"temperature": 1.0, "top_k": 40},
        ),
        (BudgetForcing(think_end=BOXED, max_thinking_tokens=9), {"temperature": 0.8, "top_p": 0.9}),
        (BudgetForcing(think_end=BOXED, min_thinking_tokens=30, max_thinking_tokens=50, max_waits=0), {}),
        (BudgetForcing(think_end="\\", min_thinking_tokens=40, max_waits=1), {"temperature": 0.0}),
    ],
)
def test_budget_forced_traces_pass_and_their_forced_tokens_are_checked(
    engine: TransformersEngine, validator: Scorer, budget: BudgetForcing, sampling: dict[str, Any]
) -> None:
    jobs = [make_job(300 + i, PROBLEMS[i], budget=budget, max_tokens=110, **sampling) for i in range(4)]
    gens = engine.generate(jobs)
    honest = [claim(j, g) for j, g in zip(jobs, gens, strict=True)]
    assert all(r.passed for r in outcomes(validator, honest)), outcomes(validator, honest)
    # A forced token edited into anything else is caught where the rule forces it.
    edited, expected = [], []
    for job, gen in zip(jobs, gens, strict=True):
        tokens = gen.completion_token_ids
        for p in _forced_positions(validator, job, tokens)[:1]:
            changed = [*tokens[:p], (tokens[p] + 1) % 200 + 3, *tokens[p + 1 :]]
            edited.append(claim(job, gen, tokens=changed))
            expected.append(p)
    assert expected  # the budget did force something in these traces
    results = outcomes(validator, edited)
    assert [r.position for r in results] == expected and not any(r.passed for r in results)
    assert all("budget forcing" in r.reason for r in results)


def _forced_positions(validator: Scorer, job: JobSpec, tokens: list[int]) -> list[int]:
    """Positions the rule forces (from the maximum, or a wait text's later tokens)."""
    assert job.budget is not None
    words = validator.budget_tokens(job.budget)
    state = forcing.BudgetState(job.budget, words)
    found = []
    for p, token in enumerate(tokens):
        step = state.step()
        if step.forced is not None:
            found.append(p)
        elif step.watch and token == words.wait[0]:
            state.start_wait()  # the wait text began here; its other tokens are forced
        state.advance(token)
    return found
