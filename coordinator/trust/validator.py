"""Validate claimed traces with one batched prefill: no database, so the benchmark and the task share it."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from coordinator.trust.policy import tolerance
from ml.rescore import Case, Claim, JobRules, rescore_many
from ml.scorer import Scorer, wait_for
from shared.protocol import JobSpec, NoiseScheme
from shared.trust_types import Outcome


@dataclass(frozen=True)
class Submitted:
    """A claimed trace and the job it claims to answer (the spec exactly as the worker leased it)."""

    spec: JobSpec
    tokens: Sequence[int]
    logprobs: Sequence[float]
    finish_reason: str
    text: str
    worker_dtype: str
    noise: NoiseScheme | None = None  # the engine's noise scheme (EngineInfo.noise); None: Flywheel's


@dataclass(frozen=True)
class Checked:
    outcome: Outcome
    seconds: float  # this trace's share of the prefill plus its own re-scoring
    prefill_seconds: float = 0.0  # of which the prefill


def rules_for(
    scorer: Scorer, spec: JobSpec, prompt_tokens: int, noise: NoiseScheme | None = None
) -> JobRules:
    """What the worker's engine was bound by: the job's sampling and budget, the model's stop ids,
    max_tokens cut to what the model's context leaves after the prompt, and the noise scheme its
    sampler drew with (keyed, for vLLM's, by positions counted from the prompt the validator
    tokenized itself)."""
    budget = spec.budget
    return JobRules(
        noise=noise,
        prompt_tokens=prompt_tokens,
        sampling=spec.sampling,
        sample_index=spec.sample_index,
        limit=max(0, min(spec.sampling.max_tokens, scorer.context - prompt_tokens)),
        stops=scorer.stops,
        budget=budget,
        budget_tokens=scorer.budget_tokens(budget) if budget is not None else None,
    )


def validate(
    scorer: Scorer,
    traces: Sequence[Submitted],
    eps: float | None = None,
    noise: Mapping[str, float] | None = None,
) -> list[Checked]:
    """Re-score each trace; `eps` overrides the dtype-based tolerance (calibration runs use 0),
    `noise` is the model's own noise table where the operator measured one (policy.tolerance).

    One prefill per group of traces (ml/scorer.py), then one scoring pass over all their rows; each
    trace is charged its share of both, by token count."""
    prompts = [scorer.prompt_ids(t.spec.messages) for t in traces]
    rules = [rules_for(scorer, t.spec, len(p), t.noise) for t, p in zip(traces, prompts, strict=True)]
    # A claim the model cannot replay never reaches it: one bad id in a batch would fail the whole
    # prefill (on CUDA, poison the process), so it fails alone here, before any tensor is built.
    problems = [unreplayable(scorer, t, rules[i], len(prompts[i])) for i, t in enumerate(traces)]
    fits = [i for i, problem in enumerate(problems) if problem is None]
    started = time.perf_counter()
    logits = scorer.completion_logits([prompts[i] for i in fits], [list(traces[i].tokens) for i in fits])
    wait_for(logits)  # scoring would wait for the prefill anyway; this only lets it be timed apart
    prefilled = time.perf_counter() - started
    allowed = [eps if eps is not None else tolerance(t.worker_dtype, scorer.dtype, noise) for t in traces]
    cases = [
        Case(row, rules[i], Claim(traces[i].tokens, traces[i].logprobs, traces[i].finish_reason), allowed[i])
        for i, row in zip(fits, logits, strict=True)
    ]
    scored = dict(zip(fits, rescore_many(cases), strict=True))
    outcomes = [
        _finish(scorer, trace, problems[i], scored.get(i), allowed[i]) for i, trace in enumerate(traces)
    ]
    elapsed = time.perf_counter() - started
    sizes = [len(p) + len(t.tokens) for p, t in zip(prompts, traces, strict=True)]
    total = sum(sizes[i] for i in fits) or 1
    return [
        Checked(outcome, elapsed * sizes[i] / total, prefilled * sizes[i] / total)
        if i in scored
        else Checked(outcome, 0.0)
        for i, outcome in enumerate(outcomes)
    ]


@dataclass(frozen=True)
class Failure:
    """A claim failed before re-scoring: where (a position, or None) and why."""

    position: int | None
    reason: str


def unreplayable(scorer: Scorer, trace: Submitted, rules: JobRules, prompt_tokens: int) -> Failure | None:
    """Why the model cannot replay this claim (a failed validation: an honest engine never
    produces it), or None."""
    n = len(trace.tokens)
    if len(trace.logprobs) != n:
        return Failure(None, f"{n} token ids but {len(trace.logprobs)} logprobs")
    for p, token in enumerate(trace.tokens):
        if type(token) is not int or not 0 <= token < scorer.vocab:
            return Failure(p, f"token id {token!r} is outside the model's vocabulary of {scorer.vocab}")
    if prompt_tokens + n > scorer.context:
        return Failure(None, f"{prompt_tokens + n} tokens exceed the model's context {scorer.context}")
    if n > rules.limit:  # it could overrun the context, and an honest engine stops at the limit
        return Failure(rules.limit, f"{n} tokens exceed the {rules.limit} the job allowed")
    return None


def _finish(
    scorer: Scorer, trace: Submitted, problem: Failure | None, outcome: Outcome | None, eps: float
) -> Outcome:
    n = len(trace.tokens)
    if problem is not None or outcome is None:
        failure = problem or Failure(None, "not re-scored")
        return Outcome(False, failure.reason, failure.position, -math.inf, math.nan, eps, n)
    if outcome.passed and scorer.decode(trace.tokens) != trace.text:
        # The verifier scores the text: it must be exactly what the validated tokens decode to.
        reason = "the text is not what the token ids decode to"
        return replace(outcome, passed=False, reason=reason, position=None)
    return outcome
