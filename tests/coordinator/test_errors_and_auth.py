"""Bad requests get the one error shape and change nothing."""

from __future__ import annotations

import json

import pytest

from coordinator.db import transaction
from coordinator.stats import collect_stats
from shared.protocol import ErrorBody
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import make_campaign, trace_for


def _snapshot(api: Api) -> str:
    with transaction(api.runtime.sessions) as session:
        return collect_stats(session).model_dump_json()


def _assert_error(response, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = ErrorBody.model_validate(response.json())
    assert body.error.code == code
    assert body.error.message


def test_unauthenticated_and_bad_tokens(api: Api) -> None:
    make_campaign(api)
    before = _snapshot(api)
    _assert_error(api.client.post("/v1/leases", json={"max_jobs": 1}), 401, "unauthorized")
    _assert_error(
        api.client.post("/v1/leases", json={}, headers={"Authorization": "Bearer fw_nope"}),
        401,
        "unauthorized",
    )
    _assert_error(api.client.get("/v1/stats"), 401, "unauthorized")
    assert _snapshot(api) == before


@pytest.mark.parametrize(
    ("method", "path", "who"),
    [
        ("post", "/v1/problem-sets", "volunteer"),
        ("post", "/v1/campaigns", "volunteer"),
        ("get", "/v1/workers", "researcher"),
        ("get", "/v1/datasets", "volunteer"),
        ("post", "/v1/leases", "researcher"),
    ],
)
def test_wrong_scope_is_forbidden(api: Api, method: str, path: str, who: str) -> None:
    headers = api.volunteer() if who == "volunteer" else api.researcher
    before = _snapshot(api)
    body = {"name": "x", "source": "arithmetic"} if "problem" in path else {}
    _assert_error(
        getattr(api.client, method)(path, headers=headers, **({"json": body} if method == "post" else {})),
        403,
        "forbidden",
    )
    assert _snapshot(api) == before


def test_malformed_requests(api: Api) -> None:
    make_campaign(api)
    worker = api.volunteer()
    before = _snapshot(api)
    _assert_error(
        api.client.post(
            "/v1/leases", content=b"{not json", headers={**worker, "Content-Type": "application/json"}
        ),
        422,
        "validation_error",
    )
    _assert_error(
        api.client.post("/v1/leases", json={"max_jobs": -3}, headers=worker), 422, "validation_error"
    )
    _assert_error(
        api.client.post("/v1/results", json={"results": []}, headers=worker), 422, "validation_error"
    )
    _assert_error(
        api.client.post("/v1/results", json={"results": [{"text": 1}]}, headers=worker),
        422,
        "validation_error",
    )
    _assert_error(api.client.get("/v1/nowhere", headers=worker), 404, "not_found")
    assert _snapshot(api) == before


def test_oversized_payload_is_refused_before_parsing(api: Api) -> None:
    make_campaign(api)
    worker = api.volunteer()
    job = api.client.post("/v1/leases", json={"max_jobs": 1}, headers=worker).json()["jobs"][0]
    before = _snapshot(api)
    huge = trace_for(job, text="x" * (api.runtime.settings.max_request_bytes + 10))
    response = api.client.post(
        "/v1/results",
        content=json.dumps({"results": [huge]}),
        headers={**worker, "Content-Type": "application/json"},
    )
    _assert_error(response, 413, "payload_too_large")
    assert _snapshot(api) == before


def test_protocol_mismatch_is_refused(api: Api) -> None:
    worker = {**api.volunteer(), "X-Flywheel-Protocol": "999"}
    _assert_error(api.client.post("/v1/leases", json={}, headers=worker), 426, "protocol_mismatch")


def test_banned_worker_is_refused_and_restored(api: Api) -> None:
    worker = api.volunteer("cheat")
    worker_id = next(
        w["id"] for w in api.client.get("/v1/workers", headers=api.operator).json() if w["name"] == "cheat"
    )
    assert api.client.post(f"/v1/workers/{worker_id}/ban", headers=api.operator).json()["banned"] is True
    _assert_error(api.client.post("/v1/leases", json={}, headers=worker), 403, "forbidden")
    api.client.post(f"/v1/workers/{worker_id}/restore", headers=api.operator)
    assert api.client.post("/v1/leases", json={}, headers=worker).status_code == 200


def test_operator_creates_scoped_tokens(api: Api) -> None:
    r = api.client.post("/v1/tokens", json={"name": "lab", "scope": "researcher"}, headers=api.operator)
    assert r.status_code == 201
    token = {"Authorization": f"Bearer {r.json()['token']}"}
    assert api.client.get("/v1/datasets", headers=token).status_code == 200
    _assert_error(api.client.get("/v1/workers", headers=token), 403, "forbidden")


def test_tokens_are_stored_hashed(api: Api) -> None:
    from sqlalchemy import select

    from coordinator.workers.models import Worker

    r = api.client.post("/v1/workers/register", json={"name": "v", "engine": {"name": "vllm"}})
    token = r.json()["token"]
    with transaction(api.runtime.sessions) as session:
        hashes = session.scalars(select(Worker.token_hash)).all()
    assert token not in hashes and all(len(h) == 64 for h in hashes)
