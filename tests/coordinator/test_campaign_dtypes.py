"""A campaign's compute dtypes are rows of their own (campaign_dtypes), not a delimited string: a
dtype matches only itself, and migration 0011 carries existing campaigns' dtypes both ways."""

from __future__ import annotations

import uuid
from typing import Any

from alembic import command
from sqlalchemy import create_engine, text

from coordinator.db import alembic_config
from tests.coordinator.conftest import Api, make_settings, serve


def _campaign(api: Api, dtypes: list[str] | None) -> dict[str, Any]:
    r = api.client.post(
        "/v1/problem-sets", json={"name": uuid.uuid4().hex[:8], "source": "arithmetic", "limit": 2},
        headers=api.operator,
    )  # fmt: skip
    body: dict[str, Any] = {"name": uuid.uuid4().hex[:8], "problem_set_id": r.json()["id"],
                            "model": {"name": "flywheel/tiny-arith"}}  # fmt: skip
    if dtypes is not None:
        body["worker_dtypes"] = dtypes
    created = api.client.post("/v1/campaigns", json=body, headers=api.operator)
    assert created.status_code == 201, created.text
    return dict(created.json())


def _leased(api: Api, dtype: str) -> set[str]:
    """The campaigns a worker computing in `dtype` is leased jobs of (its leases given back after)."""
    worker = api.volunteer(dtype)
    jobs = api.client.post("/v1/leases", json={"max_jobs": 16, "dtype": dtype}, headers=worker).json()["jobs"]
    released = api.client.post(
        "/v1/leases/release", json={"lease_ids": [j["lease_id"] for j in jobs]}, headers=worker
    )
    assert released.status_code == 200, released.text
    return {job["spec"]["campaign_id"] for job in jobs}


def _waiting(api: Api, dtype: str) -> int:
    r = api.client.get(f"/v1/models/waiting?dtype={dtype}", headers=api.operator)
    return sum(int(m["queued_jobs"]) for m in r.json()["models"])


def test_a_campaign_takes_the_dtypes_it_names_and_any_when_it_names_none(database_url: str) -> None:
    with serve(make_settings(database_url, max_in_flight_per_worker=16)) as api:
        both = _campaign(api, ["float32", "bfloat16", "float32"])
        f32 = _campaign(api, ["float32"])
        free = _campaign(api, None)
        assert both["worker_dtypes"] == ["bfloat16", "float32"] and free["worker_dtypes"] is None
        assert _leased(api, "float16") == {free["id"]}
        assert _leased(api, "bfloat16") == {both["id"], free["id"]}
        assert _leased(api, "float32") == {both["id"], f32["id"], free["id"]}
        assert (_waiting(api, "float16"), _waiting(api, "bfloat16"), _waiting(api, "float32")) == (2, 4, 6)


def test_migration_0011_carries_the_dtypes_down_and_up(database_url: str) -> None:
    with serve(make_settings(database_url)) as api:
        campaign = _campaign(api, ["float32", "bfloat16"])
        api.runtime.engine.dispose()
    config = alembic_config(database_url)
    command.downgrade(config, "0010")
    engine = create_engine(database_url)
    with engine.connect() as connection:
        [stored] = connection.execute(text("SELECT worker_dtypes FROM campaigns")).scalars().all()
    engine.dispose()
    assert stored == ",bfloat16,float32,"
    command.upgrade(config, "head")
    with serve(make_settings(database_url)) as api:
        shown = api.client.get(f"/v1/campaigns/{campaign['id']}", headers=api.operator).json()
    assert shown["worker_dtypes"] == ["bfloat16", "float32"]
