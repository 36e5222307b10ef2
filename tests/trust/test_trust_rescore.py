"""Validation by re-scoring on the bundled model: honest traces pass across batching and precision;
every kind of edit is caught at the position it was made."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from coordinator.trust.policy import tolerance
from coordinator.trust.validator import Submitted
from ml.loading import stop_token_ids
from ml.scorer import Scorer, scorer
from shared.assets import TINY_MODEL_NAME
from shared.protocol import JobSpec, SamplingParams
from shared.sampling import filtered_logprobs, gumbel_noise
from tests.trust.helpers import PROBLEMS, claim, make_job, outcomes
from worker.engines.hf import TransformersEngine
from worker.engines.prompt import prompt_token_ids

SAMPLINGS: list[dict[str, Any]] = [
    {"temperature": 1.0},
    {"temperature": 0.7, "top_p": 0.9},
    {"temperature": 1.0, "top_k": 5},
    {"temperature": 0.0},
    {"temperature": 1.3, "top_p": 0.95, "top_k": 20},
]
EPS32 = tolerance("float32", "float32")


def mixed_jobs(first_seed: int) -> list[JobSpec]:
    return [
        make_job(
            first_seed + i, PROBLEMS[i % len(PROBLEMS)], sample_index=i % 3, **SAMPLINGS[i % len(SAMPLINGS)]
        )
        for i in range(10)
    ]


def exact_logprobs(validator: Scorer, job: JobSpec, *completions: Sequence[int]) -> list[list[float]]:
    """The logprobs a careful forger claims for each completion: the validator's own numbers."""
    prompt = validator.prompt_ids(job.messages)
    rows = validator.completion_logits([prompt] * len(completions), [list(c) for c in completions])
    out = []
    for logits, tokens in zip(rows, completions, strict=True):
        picked = filtered_logprobs(torch, logits, [job.sampling] * len(tokens))
        out.append([float(x) for x in picked[torch.arange(len(tokens)), torch.tensor(tokens)].tolist()])
    return out


def runner_ups(validator: Scorer, job: JobSpec, tokens: Sequence[int]) -> list[int]:
    """Per position, the token that scores second: the hardest single-token edit to catch."""
    prompt = validator.prompt_ids(job.messages)
    logits = validator.completion_logits([prompt], [list(tokens)])[0]
    n = len(tokens)
    scores = filtered_logprobs(torch, logits, [job.sampling] * n)
    if job.sampling.temperature > 0:
        seeds, indices = [job.sampling.seed] * n, [job.sample_index] * n
        scores = scores + gumbel_noise(torch, seeds, indices, list(range(n)), torch.arange(logits.shape[-1]))
    return [int(i) for i in scores.topk(2, dim=-1).indices[:, 1].tolist()]


def test_the_validator_renders_prompts_and_stops_as_the_worker_does(
    engine: TransformersEngine, validator: Scorer
) -> None:
    job = make_job(1, PROBLEMS[1])
    assert validator.prompt_ids(job.messages) == prompt_token_ids(engine.tokenizer, job.messages)
    assert validator.stops == stop_token_ids(engine.tokenizer, engine.model.generation_config)


def test_honest_traces_pass_whatever_the_batch(engine: TransformersEngine, validator: Scorer) -> None:
    jobs = mixed_jobs(100)
    together = engine.generate(jobs)
    alone = [engine.generate([job])[0] for job in jobs[:3]]
    claims = [claim(j, g) for j, g in zip(jobs, together, strict=True)]
    claims += [claim(j, g) for j, g in zip(jobs, alone, strict=False)]
    for result in outcomes(validator, claims):
        assert result.passed, result
        assert result.needed < EPS32 / 10  # the float32 allowance is ten times what batching needs
        assert result.margin >= -2 * EPS32 and result.position is not None


def test_every_single_token_edit_is_caught_where_it_was_made(
    engine: TransformersEngine, validator: Scorer
) -> None:
    for job in (make_job(7, PROBLEMS[2]), make_job(8, PROBLEMS[3], temperature=0.0)):
        honest = engine.generate([job])[0]
        tokens = honest.completion_token_ids
        second = runner_ups(validator, job, tokens)
        # every position but the last, the stop token (see the ending test)
        edits = [[*tokens[:p], second[p], *tokens[p + 1 :]] for p in range(len(tokens) - 1)]
        forged = [
            claim(job, honest, tokens=edit, logprobs=lps, text="")
            for edit, lps in zip(edits, exact_logprobs(validator, job, *edits), strict=True)
        ]
        results = outcomes(validator, forged)
        assert [r.position for r in results] == list(range(len(tokens) - 1))
        assert not any(r.passed for r in results)


def test_claimed_logprobs_must_match_within_the_tolerance(
    engine: TransformersEngine, validator: Scorer
) -> None:
    job = make_job(21, PROBLEMS[0], temperature=0.8, top_p=0.95)
    honest = engine.generate([job])[0]
    p = len(honest.logprobs) // 2
    nudged, altered = list(honest.logprobs), list(honest.logprobs)
    nudged[p] -= 0.2 * EPS32
    altered[p] -= 20 * EPS32
    kept, caught = outcomes(
        validator, [claim(job, honest, logprobs=nudged), claim(job, honest, logprobs=altered)]
    )
    assert kept.passed
    assert not caught.passed and caught.position == p and "logprob" in caught.reason
    assert caught.logprob_error == pytest.approx(20 * EPS32, rel=0.01)


def test_a_trace_answers_only_its_own_job(engine: TransformersEngine, validator: Scorer) -> None:
    """The seed and sample index bind a trace to one job: replaying it for another fails."""
    job = make_job(31, PROBLEMS[0])
    honest = engine.generate([job])[0]
    other_seed = make_job(32, PROBLEMS[0])
    other_sample = make_job(31, PROBLEMS[0], sample_index=1)
    other_problem = make_job(31, PROBLEMS[1])
    replays = [claim(spec, honest) for spec in (other_seed, other_sample, other_problem)]
    assert outcomes(validator, [claim(job, honest)])[0].passed
    assert not any(r.passed for r in outcomes(validator, replays))


def test_sampling_at_another_temperature_is_caught(engine: TransformersEngine, validator: Scorer) -> None:
    claimed = [make_job(40 + i, PROBLEMS[i % 4], temperature=1.0) for i in range(8)]
    cheap = [
        j.model_copy(update={"sampling": j.sampling.model_copy(update={"temperature": 0.6})}) for j in claimed
    ]
    honest, cheated = engine.generate(claimed), engine.generate(cheap)
    differing = [
        claim(job, gen, logprobs=exact_logprobs(validator, job, gen.completion_token_ids)[0])
        for job, gen, real in zip(claimed, cheated, honest, strict=True)
        if gen.completion_token_ids != real.completion_token_ids
    ]
    assert differing  # otherwise the cheap traces were the honest ones, and nothing was cheated
    assert not any(r.passed for r in outcomes(validator, differing))


def test_the_ending_must_be_the_samplers(engine: TransformersEngine, validator: Scorer) -> None:
    job = make_job(51, PROBLEMS[1], temperature=0.0)
    honest = engine.generate([job])[0]
    tokens, lps = honest.completion_token_ids, honest.logprobs
    assert honest.finish_reason.value == "stop"
    cut = claim(job, honest, tokens=tokens[:-5], logprobs=lps[:-5], finish_reason="length", text="")
    no_stop = claim(job, honest, tokens=tokens[:-1], logprobs=lps[:-1], finish_reason="stop")
    longer = claim(job, honest, tokens=[*tokens, tokens[0]], logprobs=[*lps, -0.1], finish_reason="length")
    too_long = claim(job, honest, spec=make_job(51, PROBLEMS[1], temperature=0.0, max_tokens=len(tokens) - 1))
    errored = claim(job, honest, finish_reason="error")
    results = outcomes(validator, [cut, no_stop, longer, too_long, errored])
    assert not any(r.passed for r in results), results
    assert results[0].position == len(tokens) - 6 and "length" in results[0].reason
    assert results[2].position == len(tokens) - 1 and "after a stop token" in results[2].reason


def test_the_text_must_be_what_the_tokens_decode_to(engine: TransformersEngine, validator: Scorer) -> None:
    job = make_job(61, PROBLEMS[2])
    honest = engine.generate([job])[0]
    boxed = honest.text.rsplit("\\boxed{", 1)[0] + "\\boxed{4928}"
    result = outcomes(validator, [claim(job, honest, text=boxed)])[0]
    assert not result.passed and "decode" in result.reason


def test_fabricated_text_is_caught_at_its_first_token(validator: Scorer) -> None:
    job = make_job(71, PROBLEMS[0])
    text = "9081+4456 \\boxed{13537}"
    tokens = [*validator.tokenizer(text, add_special_tokens=False)["input_ids"], min(validator.stops)]
    forged = Submitted(job, tokens, exact_logprobs(validator, job, tokens)[0], "stop", text, "float32")
    result = outcomes(validator, [forged])[0]
    assert not result.passed and result.position is not None and result.position < 3


def test_precision_differences_stay_within_the_bfloat16_allowance(
    engine: TransformersEngine, validator: Scorer
) -> None:
    """float32 traces checked by a bfloat16 validator, and bfloat16 traces by the float32 one."""
    jobs = mixed_jobs(200)[:6]
    wide = scorer(TINY_MODEL_NAME, None, "cpu", "bfloat16")
    low = TransformersEngine.load(TINY_MODEL_NAME, device="cpu", dtype="bfloat16")
    try:
        from32 = [claim(j, g) for j, g in zip(jobs, engine.generate(jobs), strict=True)]
        from16 = [claim(j, g, dtype="bfloat16") for j, g in zip(jobs, low.generate(jobs), strict=True)]
    finally:
        low.close()
    for result in outcomes(wide, from32):
        assert result.passed and result.tolerance == pytest.approx(tolerance("float32", "bfloat16")), result
    for result in outcomes(validator, from16):
        assert result.passed and result.tolerance == pytest.approx(tolerance("bfloat16", "float32")), result


def test_a_claim_is_checked_against_its_own_sampling(engine: TransformersEngine, validator: Scorer) -> None:
    """Greedy claims for a sampled job fail, sampled claims for a greedy job fail."""
    sampled, greedy = make_job(81, PROBLEMS[3]), make_job(81, PROBLEMS[3], temperature=0.0)
    gen_sampled, gen_greedy = engine.generate([sampled, greedy])
    if gen_sampled.completion_token_ids == gen_greedy.completion_token_ids:
        pytest.skip("this seed samples the greedy path: nothing differs")
    swapped = [claim(sampled, gen_greedy), claim(greedy, gen_sampled)]
    assert not any(r.passed for r in outcomes(validator, swapped))


def test_outcomes_are_json_safe(validator: Scorer) -> None:
    job = make_job(91, PROBLEMS[0])
    result = outcomes(validator, [Submitted(job, [], [], "stop", "", "float32")])[0]
    assert not result.passed and math.isinf(result.margin)
    assert result.details()["margin"] is None


@pytest.mark.parametrize("filters", [{"top_k": 2}, {"top_p": 0.6}, {"top_k": 3, "top_p": 0.7}])
def test_every_allowed_token_is_a_rival_the_claim_must_beat(filters: dict[str, Any]) -> None:
    """The sampler's pick among a filtered set passes; any other member of the set fails, the
    boundary token included, on both sides of the pick."""
    from ml.rescore import Claim, JobRules, rescore
    from shared.sampling import sample_step

    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(40, 64, generator=generator, dtype=torch.float64) * 2
    sampling = SamplingParams(temperature=0.8, seed=17, max_tokens=40, **filters)
    tokens, logprobs = sample_step(torch, logits, [17] * 40, [0] * 40, list(range(40)), [sampling] * 40)
    rules = JobRules(sampling, 0, limit=40, stops=frozenset({64}))  # no stop id in this vocabulary
    picks = [int(t) for t in tokens.tolist()]
    assert rescore(logits, rules, Claim(picks, logprobs.tolist(), "length"), EPS32).passed
    allowed = torch.isfinite(filtered_logprobs(torch, logits, [sampling] * 40))
    swaps = [(p, int(t)) for p in range(40) for t in allowed[p].nonzero()[:, 0].tolist() if t != picks[p]]
    assert len({p for p, _ in swaps}) > 20  # most positions allow more than one token
    for p, other in swaps:
        edited = [*picks[:p], other, *picks[p + 1 :]]
        lps = filtered_logprobs(torch, logits, [sampling] * 40)[torch.arange(40), torch.tensor(edited)]
        result = rescore(logits, rules, Claim(edited, lps.tolist(), "length"), EPS32)
        assert not result.passed and result.position == p, (p, other, result)
