"""Budget forcing: the rule on token sequences, then on the tiny model, checked the way a
validator re-derives it from one prefill."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from conftest import make_job

from shared.assets import TINY_MODEL_NAME, tiny_model_dir
from shared.budget import BudgetState, BudgetTokens, thinking_length
from shared.protocol import BudgetForcing, FinishReason, JobSpec
from shared.sampling import filtered_logprobs, gumbel_noise
from worker.engines.base import Generation
from worker.engines.hf import TransformersEngine
from worker.engines.prompt import prompt_token_ids

END, WAIT, STOP = (7, 8, 9), (5, 6), 2
TOKENS = BudgetTokens(think_end=END, wait=WAIT, stops=frozenset({STOP}))


def run_rule(budget: BudgetForcing, model: list[int]) -> list[int]:
    """Feed the controller a 'model' that would emit `model` token by token (then more 1s)."""
    state = BudgetState(budget, TOKENS)
    wanted = iter([*model, *[1] * 100])
    candidate = next(wanted)
    while len(state.completion) < 40 and not (state.completion and state.completion[-1] == STOP):
        plan = state.step()
        if plan.forced is not None:
            state.advance(plan.forced)
            continue
        token = candidate
        while token in plan.suppress:  # suppressed: the model's next preference
            token = next(wanted)
        if token in plan.watch:
            state.advance(state.start_wait())
        else:
            state.advance(token)
        candidate = next(wanted)
    return state.completion


def test_max_forces_think_end_at_the_cap() -> None:
    out = run_rule(BudgetForcing(max_thinking_tokens=4), [3] * 10)
    assert out[:7] == [3, 3, 3, 3, *END]
    assert thinking_length(out, END) == 4


def test_max_completes_a_think_end_the_model_had_begun() -> None:
    # the model emitted 7, 8 (a prefix of E) right at the cap: only the rest of E is forced
    out = run_rule(BudgetForcing(max_thinking_tokens=4), [3, 3, 7, 8, 3, 3])
    assert out[:5] == [3, 3, 7, 8, 9] and thinking_length(out, END) == 2


def test_min_replaces_an_early_end_with_wait_then_suppresses() -> None:
    budget = BudgetForcing(min_thinking_tokens=12, max_waits=1)
    # The model ends thinking early with E at 2-4, with EOS at 7, with E again at 8-10, then
    # once more with E completing at position 13, past the minimum.
    wants = [3, 3, 7, 8, 9, 4, STOP, 4, 7, 8, 9, 3, 7, 8, 9, STOP]
    out = run_rule(budget, wants)
    # E's last token became the wait text (its partial stays); EOS and the later E's last token
    # were suppressed (the model's next choice taken instead); the last E stands.
    assert out == [3, 3, 7, 8, *WAIT, 4, 4, 7, 8, 3, 7, 8, 9, STOP]
    assert thinking_length(out, END) == 11  # E began before the minimum, completed after it


def test_without_waits_the_minimum_only_suppresses() -> None:
    out = run_rule(BudgetForcing(min_thinking_tokens=6, max_waits=0), [3, 7, 8, 9, 4, 4, 7, 8, 9, STOP])
    assert out == [3, 7, 8, 4, 4, 7, 8, 9, STOP]  # the first E was cut short, the second stands


def test_thinking_ends_once_and_the_rest_is_free() -> None:
    out = run_rule(
        BudgetForcing(min_thinking_tokens=2, max_thinking_tokens=30), [3, 3, 7, 8, 9, 7, 8, 9, STOP]
    )
    assert out == [3, 3, *END, *END, STOP]


# --------------------------------------------------------------------------- on a model

bundled = pytest.mark.skipif(
    not (tiny_model_dir() / "config.json").exists(), reason="the bundled tiny model is not built"
)
PROBLEMS = ["What is 9081 + 4456?", "What is 347 * 28?", "What is 77 * 64?", "What is 6024 - 3517?"]
BOXED = "\\boxed{"


@pytest.fixture(scope="module")
def engine(tiny_model: str) -> Iterator[TransformersEngine]:
    loaded = TransformersEngine.load(tiny_model, device="cpu")
    yield loaded
    loaded.close()


def rederive(engine: TransformersEngine, job: JobSpec, gen: Generation) -> None:
    """What a validator does with a budget-forced trace: one prefill, then replay the rule.

    At each position the controller says forced (check the token and that its logprob is the
    raw log-softmax) or sampled (mask the suppressed ids, check the token is the perturbed
    argmax; a watched early end must have been replaced by the wait text)."""
    assert job.budget is not None
    prompt = prompt_token_ids(engine.tokenizer, job.messages)
    with torch.inference_mode():
        ids = torch.tensor([prompt + gen.completion_token_ids], device=engine.model.device)
        logits = engine.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].to("cpu", torch.float64)
    state = BudgetState(job.budget, engine.budget_tokens(job.budget))
    for p, (token, claimed) in enumerate(zip(gen.completion_token_ids, gen.logprobs, strict=True)):
        plan = state.step()
        row = logits[p : p + 1].clone()
        row[0, sorted(plan.suppress)] = float("-inf")
        allowed = filtered_logprobs(torch, row, [job.sampling])
        if plan.forced is not None:
            expected, raw = plan.forced, True
        else:
            noise = gumbel_noise(
                torch, [job.sampling.seed], [job.sample_index], [p], torch.arange(row.shape[-1])
            )
            sampled = int((allowed + noise * (job.sampling.temperature > 0)).argmax())
            expected, raw = (state.start_wait(), True) if sampled in plan.watch else (sampled, False)
        assert token == expected, f"position {p}"
        reference = torch.log_softmax(logits[p], -1)[token] if raw else allowed[0, token]
        assert claimed == pytest.approx(float(reference), abs=1e-4)
        state.advance(token)


def budget_jobs(model: str, budget: BudgetForcing | None, **sampling: float) -> list[JobSpec]:
    jobs = [
        make_job(model, seed=40 + i, prompt=p, max_tokens=110, **sampling) for i, p in enumerate(PROBLEMS)
    ]
    return [job.model_copy(update={"budget": budget}) for job in jobs]


@bundled
def test_max_budget_cuts_thinking_and_min_budget_extends_it(engine: TransformersEngine) -> None:
    name = TINY_MODEL_NAME
    free = engine.generate(budget_jobs(name, None, temperature=0.0))
    end = engine.budget_tokens(BudgetForcing(think_end=BOXED)).think_end
    natural = [thinking_length(g.completion_token_ids, end) for g in free]
    assert all(n is not None and n > 20 for n in natural), [g.text for g in free]

    capped = engine.generate(
        budget_jobs(name, BudgetForcing(think_end=BOXED, max_thinking_tokens=12), temperature=0.0)
    )
    for gen in capped:
        assert thinking_length(gen.completion_token_ids, end) == 12
        assert BOXED in gen.text
    assert sum(len(g.completion_token_ids) for g in capped) < sum(len(g.completion_token_ids) for g in free)

    floor = max(n for n in natural if n is not None) + 10
    longer = engine.generate(
        budget_jobs(name, BudgetForcing(think_end="\\", min_thinking_tokens=floor), temperature=0.0)
    )
    backslash = engine.budget_tokens(BudgetForcing(think_end="\\")).think_end
    for gen, before in zip(longer, free, strict=True):
        thought = thinking_length(gen.completion_token_ids, backslash)
        assert thought is None or thought >= floor  # None: max_tokens ran out while thinking
        assert len(gen.completion_token_ids) > len(before.completion_token_ids)
        assert "Wait" in gen.text


@pytest.mark.parametrize(
    ("budget", "sampling"),
    [
        (
            BudgetForcing(think_end="\\", min_thinking_tokens=70, max_waits=2),
            {"temperature": 1.0, "top_k": 40},
        ),
        (BudgetForcing(think_end=BOXED, max_thinking_tokens=9), {"temperature": 0.8, "top_p": 0.9}),
        (BudgetForcing(think_end=BOXED, min_thinking_tokens=30, max_thinking_tokens=50, max_waits=0), {}),
    ],
)
def test_budget_forced_traces_rederive_from_one_prefill(
    engine: TransformersEngine, budget: BudgetForcing, sampling: dict[str, float]
) -> None:
    jobs = budget_jobs(engine.model_name, budget, **sampling)
    plain = make_job(engine.model_name, seed=9, prompt=PROBLEMS[0], max_tokens=20)
    generations = engine.generate([*jobs, plain])  # budget rows and a plain row share the batch
    for job, gen in zip(jobs, generations, strict=False):
        assert gen.finish_reason in (FinishReason.stop, FinishReason.length)
        rederive(engine, job, gen)
    alone = engine.generate([jobs[1]])[0]
    assert alone.completion_token_ids == generations[1].completion_token_ids
