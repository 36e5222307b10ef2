"""Per-worker sequential evidence (docs/trust.md, "Evidence over a worker's lifetime"): honest
bfloat16 traces of the bundled model stay below the threshold over many validations, cheaters whose
every trace passes alone cross it, and the crossing quarantines through the real coordinator."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from coordinator.db import transaction
from coordinator.results.models import Trace
from coordinator.trust.models import Validation
from coordinator.trust.validator import Submitted
from ml.scorer import Scorer
from shared import evidence
from shared.assets import TINY_MODEL_NAME
from shared.protocol import JobSpec
from shared.sampling import filtered_logprobs
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import make_campaign
from tests.trust.helpers import (
    PROBLEMS,
    claim,
    generate,
    lease,
    make_job,
    outcomes,
    set_floor,
    settle,
    submission,
    submit,
    trust_record,
    worker_id,
)
from worker.engines.base import Generation
from worker.engines.hf import TransformersEngine

SETTINGS: list[dict[str, float]] = [{"temperature": 1.0}, {"temperature": 0.7, "top_p": 0.9}, {"top_k": 5}]
EDIT = 0.15  # nats added to each claimed logprob: inside a bfloat16 claim's allowance (2 eps / T >= 0.6)
H = evidence.threshold(1e-6, 100_000)


def _jobs(first_seed: int, n: int) -> list[JobSpec]:
    return [
        make_job(
            first_seed + i, PROBLEMS[i % len(PROBLEMS)], 0, None, max_tokens=64, **SETTINGS[i % len(SETTINGS)]
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def bf16_engine() -> Iterator[TransformersEngine]:
    """An honest volunteer's engine in bfloat16: the claim with the wide allowance."""
    loaded = TransformersEngine.load(TINY_MODEL_NAME, device="cpu", dtype="bfloat16")
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def honest(bf16_engine: TransformersEngine, validator: Scorer) -> tuple[list[int], list[Submitted]]:
    """Cell counts calibrated on one set of honest bfloat16 traces, and a second, held-out set."""
    calibration_jobs, held_out_jobs = _jobs(100, 24), _jobs(500, 24)
    calibration = [
        claim(j, g, "bfloat16")
        for j, g in zip(calibration_jobs, bf16_engine.generate(calibration_jobs), strict=True)
    ]
    counts = [0] * evidence.BINS
    for outcome in outcomes(validator, calibration):
        assert outcome.passed, outcome.reason
        counts = [a + b for a, b in zip(counts, outcome.cells, strict=True)]
    gens = bf16_engine.generate(held_out_jobs)
    return counts, [claim(j, g, "bfloat16") for j, g in zip(held_out_jobs, gens, strict=True)]


def _peak(
    cells: Sequence[Sequence[int]], counts: list[int], validations: int, seed: int = 0
) -> tuple[float, int]:
    """The highest CUSUM statistic over `validations` validations drawn from these traces' cells,
    and the validation at which it first reached the threshold H (0: never)."""
    ratios = evidence.cell_ratios(evidence.honest_distribution(counts))
    per_trace = [evidence.log_ratios(c, ratios) for c in cells]
    rng, stats, peak = random.Random(seed), [0.0] * len(evidence.ALTERNATIVES), 0.0
    for v in range(1, validations + 1):
        stats = evidence.advance(stats, rng.choice(per_trace))
        peak = max(peak, *stats)
        if peak >= H:
            return peak, v
    return peak, 0


def test_honest_bf16_workers_stay_below_the_threshold(
    honest: tuple[list[int], list[Submitted]], validator: Scorer
) -> None:
    counts, held_out = honest
    checked = outcomes(validator, held_out)
    assert all(o.passed for o in checked)
    assert all(sum(o.cells) == o.positions for o in checked)
    for seed in range(5):  # five workers of 4,000 validations each, on traces the calibration never saw
        peak, crossed = _peak([o.cells for o in checked], counts, 4_000, seed)
        assert crossed == 0 and peak < H


def _edited(held_out: Sequence[Submitted]) -> list[Submitted]:
    """Honest tokens, every logprob raised by EDIT nats (the trace claims more certainty)."""
    return [replace(c, logprobs=[min(lp + EDIT, 0.0) for lp in c.logprobs]) for c in held_out]


def _recomputed(validator: Scorer, job: JobSpec, gen: Generation) -> list[float]:
    """What a careful forger claims: the job's own rule's logprobs of its tokens."""
    import torch

    tokens = list(gen.completion_token_ids)
    logits = validator.completion_logits([validator.prompt_ids(job.messages)], [tokens])[0]
    picked = filtered_logprobs(torch, logits, [job.sampling] * len(tokens))
    return [max(float(x), -100.0) for x in picked[torch.arange(len(tokens)), torch.tensor(tokens)].tolist()]


def _hotter_job(job: JobSpec) -> JobSpec:
    return job.model_copy(
        update={"sampling": job.sampling.model_copy(update={"temperature": job.sampling.temperature + 0.1})}
    )


def _hotter(engine: TransformersEngine, validator: Scorer, jobs: Sequence[JobSpec]) -> list[Submitted]:
    """Sampling at T + 0.1 with logprobs recomputed under the job's T: those whose tokens differ
    from the honest trace's (the others are the honest trace)."""
    shifted = [_hotter_job(j) for j in jobs]
    honest_tokens = [g.completion_token_ids for g in engine.generate(list(jobs))]
    return [
        claim(job, gen, "bfloat16", logprobs=_recomputed(validator, job, gen))
        for job, gen, same in zip(jobs, engine.generate(shifted), honest_tokens, strict=True)
        if gen.completion_token_ids != same
    ]


def test_cheaters_whose_traces_pass_alone_cross_the_threshold(
    honest: tuple[list[int], list[Submitted]], engine: TransformersEngine, validator: Scorer
) -> None:
    counts, held_out = honest
    cheats = {
        "logprobs edited": _edited(held_out),
        "temperature +0.1": _hotter(engine, validator, _jobs(900, 48)),
    }
    for name, claims in cheats.items():
        passing = [o for o in outcomes(validator, claims) if o.passed]
        assert passing, name  # within the bfloat16 allowance: a per-trace check lets them through
        _, crossed = _peak([o.cells for o in passing], counts, 4_000)
        assert crossed > 0, name


# --------------------------------------------------------------------------- through the coordinator


def _round(api: Api, engine: TransformersEngine, worker: dict[str, str], n: int, edit: float) -> None:
    jobs = lease(api, worker, n)
    results = [
        submission(j, g, "bfloat16", logprobs=[min(lp + edit, 0.0) for lp in g.logprobs])
        for j, g in zip(jobs, generate(engine, jobs), strict=True)
    ]
    assert submit(api, worker, results) == ["accepted"] * n
    settle(api)


def _calibrate(api: Api, counts: list[int]) -> None:
    body = {"model": TINY_MODEL_NAME, "worker_dtype": "bfloat16", "validator_dtype": "float32",
            "counts": counts, "traces": 24}  # fmt: skip
    response = api.client.put("/v1/trust/calibrations", json=body, headers=api.operator)
    assert response.status_code == 200, response.text
    listed = api.client.get("/v1/trust/calibrations", headers=api.operator).json()
    assert [(c["model"], c["positions"]) for c in listed] == [(TINY_MODEL_NAME, sum(counts))]


def _failed_validation(api: Api, wid: str) -> tuple[Validation, Trace]:
    with transaction(api.runtime.sessions) as session:
        row = session.scalars(
            select(Validation).where(Validation.worker_id == uuid.UUID(wid), Validation.status == "failed")
        ).first()
        assert row is not None
        trace = session.get(Trace, row.trace_id)
        assert trace is not None
        session.expunge_all()
    return row, trace


def test_evidence_quarantines_through_the_coordinator(
    trust_api: Api, bf16_engine: TransformersEngine, honest: tuple[list[int], list[Submitted]]
) -> None:
    set_floor(trust_api, 1.0)  # every trace is spot-checked
    # a bound for a short lifetime, so that a few short traces can cross it: h = ln(6 * 100 / 1e-3)
    bound = {"evidence_false_alarm": 1e-3, "evidence_lifetime": 100}
    trust_api.runtime.settings = trust_api.runtime.settings.model_copy(update=bound)
    h = evidence.threshold(1e-3, 100)
    make_campaign(trust_api, problems=8, samples=4, max_tokens=48)
    volunteer = trust_api.volunteer("honest")
    vid = worker_id(trust_api, volunteer)
    _round(trust_api, bf16_engine, volunteer, 4, 0.0)
    record = trust_record(trust_api, vid)["evidence"]
    # without a calibration the evidence is weighed against the wide default, and counted as such
    assert record["validations"] == record["uncalibrated"] == 4 and record["positions"] > 0
    _calibrate(trust_api, honest[0])
    _round(trust_api, bf16_engine, volunteer, 4, 0.0)
    shown = trust_record(trust_api, vid)
    assert shown["state"] == "active" and shown["failed"] == 0
    assert shown["evidence"]["validations"] == 8 and shown["evidence"]["uncalibrated"] == 4
    assert shown["evidence"]["statistic"] < shown["evidence"]["threshold"] == pytest.approx(h)
    assert shown["evidence"]["false_alarm"] == 1e-3 and shown["evidence"]["lifetime"] == 100
    assert shown["evidence"]["false_alarm_so_far"] == pytest.approx(1e-3 * 8 / 100)
    assert all(v["evidence"]["calibrated"] for v in shown["recent"][:4])
    _cheater_is_quarantined(trust_api, bf16_engine, h)


def _cheater_is_quarantined(api: Api, engine: TransformersEngine, h: float) -> None:
    cheater = api.volunteer("cheater")
    wid = worker_id(api, cheater)
    for _ in range(6):
        if trust_record(api, wid)["state"] == "quarantined":
            break
        _round(api, engine, cheater, 4, EDIT)
    shown: dict[str, Any] = trust_record(api, wid)
    assert shown["state"] == "quarantined" and shown["last_failure"]["evidence"] is True
    assert shown["evidence"]["statistic"] >= shown["evidence"]["threshold"]
    row, trace = _failed_validation(api, wid)
    assert "evidence reached its threshold" in row.reason and row.evidence is not None
    assert max(row.evidence["statistics"]) >= h and all(v["evidence"] for v in shown["recent"][1:])
    assert trace.returned and trace.withdrawn  # its job goes back to the pool, as after any failure
    restored = api.client.post(f"/v1/workers/{wid}/trust/restore", headers=api.operator).json()
    assert restored["state"] == "active" and restored["evidence"]["statistic"] == 0.0
