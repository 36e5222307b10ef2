"""Claims the validator cannot replay: refused at submission where the model's vocabulary is known,
failed validations (with the worker quarantined) where one reaches the validator, one bad trace
never failing its batch, and no trace in a dump before its validation passed or was skipped."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from coordinator.db import transaction
from coordinator.results.models import Trace
from coordinator.trust import tasks
from coordinator.trust.models import ERROR, FAILED, PASSED, QUEUED, RECHECK, Validation
from shared.assets import TINY_MODEL_NAME
from tests.coordinator.conftest import Api, make_settings, serve
from tests.coordinator.helpers import make_campaign
from tests.pipeline.conftest import with_pipeline
from tests.pipeline.pipeline_helpers import create_job, lease_all, problem_set, trace, wait_for, worked
from tests.trust.helpers import (
    exported,
    generate,
    job_key,
    lease,
    settle,
    submission,
    submit,
    trust_record,
    worker_id,
)
from worker.engines.hf import TransformersEngine


def _trace_ids(api: Api) -> dict[str, uuid.UUID]:
    """job id -> trace id."""
    with transaction(api.runtime.sessions) as session:
        rows = session.execute(select(Trace.job_id, Trace.id)).all()
    return {str(job): trace for job, trace in rows}


def _set(api: Api, trace_id: uuid.UUID, **values: Any) -> None:
    with transaction(api.runtime.sessions) as session:
        session.execute(update(Trace).where(Trace.id == trace_id).values(**values))


def _validation(api: Api, trace_id: uuid.UUID) -> tuple[str | None, bool, list[str]]:
    """The trace's validation state, whether it is withdrawn, and the reasons of its validations."""
    with transaction(api.runtime.sessions) as session:
        trace = session.get(Trace, trace_id)
        assert trace is not None
        reasons = session.scalars(select(Validation.reason).where(Validation.trace_id == trace_id)).all()
        return trace.validation, trace.withdrawn, list(reasons)


def test_an_id_outside_the_models_vocabulary_is_refused_per_trace(
    trust_api: Api, engine: TransformersEngine
) -> None:
    make_campaign(trust_api, problems=2, samples=1, max_tokens=32)
    worker = trust_api.volunteer()
    jobs = lease(trust_api, worker, 2)
    gens = generate(engine, jobs)
    bad = submission(jobs[1], gens[1], completion_token_ids=[3, 100000], logprobs=[-0.1, -0.1])
    response = trust_api.client.post(
        "/v1/results", json={"results": [submission(jobs[0], gens[0]), bad]}, headers=worker
    )
    assert response.status_code == 200, response.text
    good_ack, bad_ack = response.json()["acks"]
    assert good_ack["status"] == "accepted"
    assert bad_ack["status"] == "rejected"
    assert "100000" in bad_ack["reason"] and "vocabulary of 320" in bad_ack["reason"]
    assert list(_trace_ids(trust_api)) == [jobs[0]["spec"]["job_id"]]


@pytest.mark.parametrize("token", [2**63, 2**70])
def test_an_id_beyond_any_vocabulary_is_a_clean_422(trust_api: Api, token: int) -> None:
    make_campaign(trust_api, problems=1, samples=1, max_tokens=32)
    worker = trust_api.volunteer()
    [job] = lease(trust_api, worker, 1)
    body = {
        "lease_id": job["lease_id"],
        "attempt_id": str(uuid.uuid4()),
        "job_id": job["spec"]["job_id"],
        "text": "so \\boxed{0}",
        "completion_token_ids": [3, token],
        "logprobs": [-0.1, -0.1],
        "finish_reason": "stop",
        "engine": {"name": "transformers"},
    }
    response = trust_api.client.post("/v1/results", json={"results": [body]}, headers=worker)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["loc"][-2:] == ["completion_token_ids", 1]
    with transaction(trust_api.runtime.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Trace)) == 0


def test_one_unreplayable_claim_fails_alone_in_its_batch_and_quarantines_its_worker(
    trust_api: Api, engine: TransformersEngine
) -> None:
    """Claims stored before the submission bound existed (or while the API could not read the
    model's vocabulary) reach the validator in a batch with honest ones, as the sweeper sends them."""
    campaign = make_campaign(trust_api, problems=5, samples=1, max_tokens=32)
    honest, vocab_cheat, garbage_cheat = (trust_api.volunteer(n) for n in ("honest", "vocab", "garbage"))
    leased = {name: lease(trust_api, w, n) for name, w, n in
              (("honest", honest, 3), ("vocab", vocab_cheat, 1), ("garbage", garbage_cheat, 1))}  # fmt: skip
    for name, worker in (("honest", honest), ("vocab", vocab_cheat), ("garbage", garbage_cheat)):
        jobs = leased[name]
        gens = generate(engine, jobs)
        assert submit(trust_api, worker, [submission(j, g) for j, g in zip(jobs, gens, strict=True)]) == [
            "accepted"
        ] * len(jobs)
    settle(trust_api)
    ids = _trace_ids(trust_api)
    out_of_vocab = ids[leased["vocab"][0]["spec"]["job_id"]]
    garbage = ids[leased["garbage"][0]["spec"]["job_id"]]
    _set(trust_api, out_of_vocab, completion_token_ids=[3, 100000], logprobs=[-0.1, -0.1])
    # what migration 0013 leaves of a stored list that was not all numbers: no logprobs
    _set(trust_api, garbage, logprobs=[])
    for trace_id in ids.values():
        _set(trust_api, trace_id, validation=QUEUED)

    tasks.validate_traces([str(i) for i in ids.values()])  # one batch, as the sweeper enqueues it

    state, withdrawn, reasons = _validation(trust_api, out_of_vocab)
    assert state == FAILED and withdrawn and "outside the model's vocabulary" in reasons[-1]
    state, withdrawn, reasons = _validation(trust_api, garbage)
    assert state == FAILED and withdrawn and " token ids but 0 logprobs" in reasons[-1]
    for cheat in (vocab_cheat, garbage_cheat):
        record = trust_record(trust_api, worker_id(trust_api, cheat))
        assert record["state"] == "quarantined" and record["failed"] == 1
    for leased_job in leased["honest"]:
        assert _validation(trust_api, ids[leased_job["spec"]["job_id"]])[:2] == (PASSED, False)
    record = trust_record(trust_api, worker_id(trust_api, honest))
    assert record["state"] == "active" and record["failed"] == 0
    dump = exported(trust_api, campaign["id"])
    assert dump == {job_key(j) for j in leased["honest"]}


def _tokens(api: Api, trace_id: uuid.UUID) -> list[int]:
    with transaction(api.runtime.sessions) as session:
        trace = session.get(Trace, trace_id)
        assert trace is not None
        return list(trace.completion_token_ids)


@pytest.mark.parametrize("state", [None, QUEUED, RECHECK, ERROR, FAILED])
def test_a_trace_is_in_dumps_only_once_its_validation_passed_or_was_skipped(
    trust_api: Api, engine: TransformersEngine, state: str | None
) -> None:
    campaign = make_campaign(trust_api, problems=2, samples=1, max_tokens=32)
    worker = trust_api.volunteer()
    jobs = lease(trust_api, worker, 2)
    gens = generate(engine, jobs)
    assert (
        submit(trust_api, worker, [submission(j, g) for j, g in zip(jobs, gens, strict=True)])
        == ["accepted"] * 2
    )
    settle(trust_api)
    assert exported(trust_api, campaign["id"]) == {job_key(j) for j in jobs}  # both passed
    _set(trust_api, _trace_ids(trust_api)[jobs[1]["spec"]["job_id"]], validation=state)
    assert exported(trust_api, campaign["id"]) == {job_key(jobs[0])}


@pytest.fixture
def pipeline_api(database_url: str, tmp_path: Path) -> Iterator[Api]:
    """The coordinator with the pipeline routes (validation off, as the pipeline tests run it)."""
    settings = make_settings(database_url, max_in_flight_per_worker=64, data_dir=tmp_path / "data")
    with serve(settings, with_pipeline) as served:
        yield served


def test_a_rollout_with_an_id_outside_the_vocabulary_never_reaches_the_trainer(pipeline_api: Api) -> None:
    """A policy version's campaign names an artifact: its ids are bounded by the base model's
    vocabulary, so the out-of-range rollout is refused and the run trains on honest ones."""
    api = pipeline_api
    spec = {"kind": "grpo", "model": TINY_MODEL_NAME, "problem_set_id": problem_set(api, 1), "steps": 1,
            "group_size": 2, "groups_per_step": 1, "device": "cpu", "poll_s": 0.05,
            "sampling": {"temperature": 1.0, "max_tokens": 128}}  # fmt: skip
    created = create_job(api, spec)
    wait_for(api, created["id"], {"waiting"})
    [version] = api.client.get(f"/v1/pipeline/jobs/{created['id']}/policy", headers=api.operator).json()
    volunteer = api.volunteer()
    right, wrong = sorted(
        lease_all(api, volunteer, [version["model"]]), key=lambda j: j["spec"]["sample_index"]
    )
    bad = trace(wrong, worked(wrong, correct=False), [7, 3, 100000])
    response = api.client.post(
        "/v1/results", json={"results": [trace(right, worked(right)), bad]}, headers=volunteer
    )
    assert response.status_code == 200, response.text
    assert [a["status"] for a in response.json()["acks"]] == ["accepted", "rejected"]
    assert "vocabulary of 320" in response.json()["acks"][1]["reason"]
    retry = api.client.post(
        "/v1/results", json={"results": [trace(wrong, worked(wrong, correct=False))]}, headers=volunteer
    )
    assert [a["status"] for a in retry.json()["acks"]] == ["accepted"]
    done = wait_for(api, created["id"], {"done"})
    assert done["metrics"]["latest"]["rollouts"] == 2 and done["metrics"]["groups"] == {"used": 1}
