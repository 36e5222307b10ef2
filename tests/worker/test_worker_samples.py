"""n samples per problem: one batch, one prefill per distinct prompt, answers worth aggregating."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import make_job

from shared.assets import TINY_MODEL_NAME, tiny_model_dir
from worker.engines.hf import TransformersEngine

PROBLEMS = [
    (9081, "+", 4456),
    (347, "*", 28),
    (77, "*", 64),
    (6024, "-", 3517),
    (518, "+", 2709),
    (93, "*", 7),
]
SAMPLES = 8


def gold(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def boxed(text: str) -> str | None:
    found = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return found[-1].strip() if found else None


@pytest.fixture(scope="module")
def engine(tiny_model: str) -> Iterator[TransformersEngine]:
    loaded = TransformersEngine.load(tiny_model, device="cpu")
    yield loaded
    loaded.close()


def test_samples_share_the_prompt_prefill_and_match_separate_runs(engine: TransformersEngine) -> None:
    widths: list[tuple[int, ...]] = []

    def record(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        widths.append(tuple(kwargs["input_ids"].shape))

    jobs = [
        make_job(engine.model_name, seed=500 + k, sample_index=k, prompt=prompt, max_tokens=16)
        for prompt in ("What is 12 + 30?", "What is 7 * 8?")
        for k in range(3)
    ]
    hook = engine.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        together = engine.generate(jobs)
    finally:
        hook.remove()
    assert widths[0][0] == 2  # six rows, two distinct prompts: two rows go through the prefill
    assert all(shape[0] == 6 for shape in widths[1:])  # then all six decode together
    for job, gen in zip(jobs, together, strict=True):
        alone = engine.generate([job])[0]
        assert gen.completion_token_ids == alone.completion_token_ids
        assert gen.logprobs == pytest.approx(alone.logprobs, abs=1e-4)
    assert len({tuple(g.completion_token_ids) for g in together}) > 2  # sample indices differ


@pytest.mark.skipif(
    not (tiny_model_dir() / "config.json").exists(), reason="the bundled tiny model is not built"
)
def test_majority_over_n_samples_beats_one_sample(engine: TransformersEngine) -> None:
    """What the coordinator's aggregation gets from the worker: on the tiny model, the majority
    answer of n sampled traces is right more often than a single sample."""
    jobs = [
        make_job(
            TINY_MODEL_NAME,
            seed=1000 + 10 * i + k,
            sample_index=k,
            prompt=f"What is {a} {op} {b}?",
            max_tokens=100,
            temperature=1.0,
        )
        for i, (a, op, b) in enumerate(PROBLEMS)
        for k in range(SAMPLES)
    ]
    answers = [boxed(g.text) for g in engine.generate(jobs)]
    single = majority = 0
    for i, problem in enumerate(PROBLEMS):
        mine = answers[i * SAMPLES : (i + 1) * SAMPLES]
        right = str(gold(*problem))
        single += sum(a == right for a in mine)
        votes = Counter(a for a in mine if a is not None).most_common(1)
        majority += bool(votes) and votes[0][0] == right
    assert 0 < single < len(jobs)  # the samples disagree: aggregation has something to do
    assert majority / len(PROBLEMS) >= single / len(jobs)
