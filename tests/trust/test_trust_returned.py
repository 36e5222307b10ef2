"""Jobs whose trace can never be used go back to the pool: an unverifiable trace, or one whose claim
failed its validation, stays as evidence (`returned`) while another worker does the job again; the
dump, the campaign's counts and the trainer see only the job's live trace."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, update

from coordinator.db import transaction
from coordinator.jobs.models import Job
from coordinator.results.models import Trace
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import make_campaign, progress
from tests.trust.helpers import exported, generate, job_key, lease, settle, submission, submit, trust_record
from tests.trust.helpers import worker_id as id_of
from worker.engines.hf import TransformersEngine


def _traces_of(api: Api, job_id: str) -> list[tuple[str, bool, str | None]]:
    """(worker id, returned, validation) of every trace stored for the job, oldest first."""
    with transaction(api.runtime.sessions) as session:
        rows = session.execute(
            select(Trace.worker_id, Trace.returned, Trace.validation)
            .where(Trace.job_id == uuid.UUID(job_id))
            .order_by(Trace.created_at)
        ).all()
    return [(str(w), bool(r), v) for w, r, v in rows]


def _job_status(api: Api, job_id: str) -> str:
    with transaction(api.runtime.sessions) as session:
        status = session.scalar(select(Job.status).where(Job.id == uuid.UUID(job_id)))
    assert status is not None
    return status


def _redo(api: Api, engine: TransformersEngine, job_id: str) -> dict[str, str]:
    """An honest second worker leases the returned job and does it; returns its headers."""
    honest = api.volunteer("honest")
    [again] = lease(api, honest, 4)
    assert again["spec"]["job_id"] == job_id
    assert submit(api, honest, [submission(again, generate(engine, [again])[0])]) == ["accepted"]
    settle(api)
    return honest


def _counted(api: Api, campaign_id: str) -> int:
    counts: dict[str, Any] = progress(api, campaign_id)["progress"]
    return int(counts["accepted"]) + int(counts["rejected"])


def test_an_unverifiable_traces_job_returns_and_is_done_again(
    trust_api: Api, engine: TransformersEngine
) -> None:
    campaign = make_campaign(trust_api, problems=1, samples=1, max_tokens=32)
    junk_worker = trust_api.volunteer("junk")
    [leased] = lease(trust_api, junk_worker, 1)
    gen = generate(engine, [leased])[0]
    assert submit(trust_api, junk_worker, [submission(leased, gen, verifiable=False)]) == ["accepted"]
    settle(trust_api)
    job_id = leased["spec"]["job_id"]
    assert _traces_of(trust_api, job_id) == [(id_of(trust_api, junk_worker), True, "unverifiable")]
    assert _job_status(trust_api, job_id) == "queued"

    honest = _redo(trust_api, engine, job_id)

    assert _traces_of(trust_api, job_id)[1] == (id_of(trust_api, honest), False, "passed")
    assert _job_status(trust_api, job_id) == "done"
    assert exported(trust_api, campaign["id"]) == {job_key(leased)}
    assert _counted(trust_api, campaign["id"]) == 1  # the returned trace is counted nowhere


def test_a_job_whose_trace_failed_validation_returns_and_the_cheat_stays_as_evidence(
    trust_api: Api, engine: TransformersEngine
) -> None:
    campaign = make_campaign(trust_api, problems=2, samples=1, max_tokens=32)
    cheat = trust_api.volunteer("cheat")
    first, second = lease(trust_api, cheat, 2)
    gens = generate(engine, [first, second])
    # The first job's claim carries the second job's tokens: not what the first job's seed gives.
    forged = submission(
        first, gens[0], text=gens[1].text, completion_token_ids=gens[1].completion_token_ids,
        logprobs=gens[1].logprobs,
    )  # fmt: skip
    assert submit(trust_api, cheat, [forged]) == ["accepted"]
    settle(trust_api)
    job_id = first["spec"]["job_id"]
    cheat_id = id_of(trust_api, cheat)
    assert _traces_of(trust_api, job_id) == [(cheat_id, True, "failed")]
    assert trust_record(trust_api, cheat_id)["state"] == "quarantined"
    assert _job_status(trust_api, job_id) == "queued"
    # The cheat's other lease is lost with its token; it expires into the pool, not the dump.
    with transaction(trust_api.runtime.sessions) as session:
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(second["spec"]["job_id"]))
            .values(status="queued", lease_id=None, worker_id=None, lease_deadline=None)
        )

    honest = trust_api.volunteer("honest")
    redo = lease(trust_api, honest, 4)
    assert {j["spec"]["job_id"] for j in redo} == {job_id, second["spec"]["job_id"]}
    results = [submission(j, g) for j, g in zip(redo, generate(engine, redo), strict=True)]
    assert submit(trust_api, honest, results) == ["accepted", "accepted"]
    settle(trust_api)

    assert [t[1:] for t in _traces_of(trust_api, job_id)] == [(True, "failed"), (False, "passed")]
    assert exported(trust_api, campaign["id"]) == {job_key(first), job_key(second)}
    assert _counted(trust_api, campaign["id"]) == 2


def test_a_returned_job_refuses_its_first_holder_and_takes_its_next(
    trust_api: Api, engine: TransformersEngine
) -> None:
    """The first holder's lease is gone: re-sending its attempt is a duplicate, a new attempt under
    the old lease is refused, and only the new holder's trace is stored as the live one."""
    make_campaign(trust_api, problems=1, samples=1, max_tokens=32)
    junk_worker = trust_api.volunteer("junk")
    [leased] = lease(trust_api, junk_worker, 1)
    gen = generate(engine, [leased])[0]
    junk = submission(leased, gen, verifiable=False)
    assert submit(trust_api, junk_worker, [junk]) == ["accepted"]
    settle(trust_api)
    assert submit(trust_api, junk_worker, [junk]) == ["duplicate"]
    assert submit(trust_api, junk_worker, [submission(leased, gen)]) == ["rejected"]
    _redo(trust_api, engine, leased["spec"]["job_id"])
    assert [t[1] for t in _traces_of(trust_api, leased["spec"]["job_id"])] == [True, False]
