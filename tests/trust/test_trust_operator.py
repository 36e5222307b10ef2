"""The trust operator endpoints of docs/trust.md that no other test drives to their effect: the
records list, the validations filters, ban, restore after a ban, and revalidate."""

from __future__ import annotations

from typing import Any

from tests.coordinator.conftest import Api
from tests.coordinator.helpers import make_campaign
from tests.trust.helpers import exported, generate, job_key, lease, settle, submission, submit, worker_id
from worker.engines.hf import TransformersEngine


def _honest(api: Api, engine: TransformersEngine, worker: dict[str, str], n: int) -> list[dict[str, Any]]:
    jobs = lease(api, worker, n)
    results = [submission(j, g) for j, g in zip(jobs, generate(engine, jobs), strict=True)]
    assert submit(api, worker, results) == ["accepted"] * n
    return jobs


def _forged(api: Api, engine: TransformersEngine, worker: dict[str, str]) -> None:
    jobs = lease(api, worker, 1)
    fake = submission(jobs[0], generate(engine, jobs)[0], completion_token_ids=[1, 2, 3], logprobs=[-0.1] * 3)
    assert submit(api, worker, [fake]) == ["accepted"]


def _get(api: Api, path: str, **params: Any) -> Any:
    r = api.client.get(path, params=params, headers=api.operator)
    assert r.status_code == 200, r.text
    return r.json()


def test_records_and_validations_show_each_workers_standing(
    trust_api: Api, engine: TransformersEngine
) -> None:
    make_campaign(trust_api, problems=4, samples=1, max_tokens=48)
    honest, cheat = trust_api.volunteer("honest"), trust_api.volunteer("cheat")
    _honest(trust_api, engine, honest, 3)
    _forged(trust_api, engine, cheat)
    settle(trust_api)
    hid, cid = worker_id(trust_api, honest), worker_id(trust_api, cheat)

    records = {r["worker_id"]: r for r in _get(trust_api, "/v1/trust/workers")}
    assert (records[hid]["state"], records[hid]["passed"], records[hid]["failed"]) == ("active", 3, 0)
    assert (records[cid]["state"], records[cid]["passed"], records[cid]["failed"]) == ("quarantined", 0, 1)
    assert records[hid]["trust"] == 3 and records[hid]["check_probability"] < 1.0
    assert records[cid]["trust"] == 0 and records[cid]["last_failure"]["reason"]
    assert len(_get(trust_api, "/v1/trust/workers", limit=1)) == 1

    mine = _get(trust_api, "/v1/trust/validations", worker_id=hid)
    assert len(mine) == 3 and {(v["worker_id"], v["status"]) for v in mine} == {(hid, "passed")}
    stamps = [v["created_at"] for v in mine]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    failed = _get(trust_api, "/v1/trust/validations", status="failed")
    assert [v["worker_id"] for v in failed] == [cid]
    assert _get(trust_api, "/v1/trust/validations", worker_id=cid, status="passed") == []
    assert len(_get(trust_api, "/v1/trust/validations", limit=2)) == 2


def test_ban_restore_and_revalidate(trust_api: Api, engine: TransformersEngine) -> None:
    campaign = make_campaign(trust_api, problems=4, samples=1, max_tokens=48)
    worker = trust_api.volunteer("w")
    wid = worker_id(trust_api, worker)
    done = {job_key(j) for j in _honest(trust_api, engine, worker, 2)}
    settle(trust_api)
    assert exported(trust_api, campaign["id"]) == done
    for action in ("ban", "restore", "revalidate"):  # operators only
        path = f"/v1/workers/{wid}/trust/{action}"
        assert trust_api.client.post(path, headers=worker).status_code in (401, 403)
        assert trust_api.client.post(path, headers=trust_api.researcher).status_code == 403

    banned = trust_api.client.post(f"/v1/workers/{wid}/trust/ban", headers=trust_api.operator)
    assert banned.status_code == 200 and banned.json()["state"] == "banned"
    assert trust_api.client.post("/v1/leases", json={"max_jobs": 1}, headers=worker).status_code in (401, 403)
    restored = trust_api.client.post(f"/v1/workers/{wid}/trust/restore", headers=trust_api.operator)
    assert restored.status_code == 200 and restored.json()["state"] == "active"
    assert trust_api.client.post("/v1/leases", json={"max_jobs": 1}, headers=worker).status_code == 200

    again = trust_api.client.post(f"/v1/workers/{wid}/trust/revalidate", headers=trust_api.operator)
    assert again.status_code == 200 and again.json() == {"worker_id": wid, "traces": 2}
    settle(trust_api)
    rechecks = _get(trust_api, "/v1/trust/validations", worker_id=wid)
    assert sorted(v["purpose"] for v in rechecks if v["status"] == "passed").count("recheck") == 2
    assert exported(trust_api, campaign["id"]) == done  # honest: every trace passed its re-check
    missing = "00000000-0000-0000-0000-000000000000"
    for action in ("ban", "restore", "revalidate"):
        r = trust_api.client.post(f"/v1/workers/{missing}/trust/{action}", headers=trust_api.operator)
        assert r.status_code == 404, (action, r.text)


def test_a_worker_restored_from_a_ban_is_checked_on_every_trace(
    trust_api: Api, engine: TransformersEngine
) -> None:
    make_campaign(trust_api, problems=2, samples=1, max_tokens=48)
    worker = trust_api.volunteer("w")
    wid = worker_id(trust_api, worker)
    _honest(trust_api, engine, worker, 2)
    settle(trust_api)
    assert (
        trust_api.client.post(f"/v1/workers/{wid}/trust/ban", headers=trust_api.operator).status_code == 200
    )
    restored = trust_api.client.post(f"/v1/workers/{wid}/trust/restore", headers=trust_api.operator).json()
    assert restored["state"] == "active"
    assert (restored["trust"], restored["check_probability"]) == (0, 1.0)
