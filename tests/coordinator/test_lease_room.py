"""A worker's in-flight limit counts its live leases only: leases past their deadline are the
pool's again (anyone, their old holder too, may take the jobs), so they must not keep their old
holder at its limit."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from coordinator.db import transaction, utcnow
from coordinator.jobs.models import Job
from tests.coordinator.conftest import make_settings, serve
from tests.coordinator.helpers import make_campaign


def test_expired_leases_do_not_count_against_the_in_flight_limit(database_url: str) -> None:
    with serve(make_settings(database_url, max_in_flight_per_worker=2)) as api:
        make_campaign(api, problems=4, samples=1)
        worker = api.volunteer()

        def lease() -> int:
            r = api.client.post("/v1/leases", json={"max_jobs": 4}, headers=worker)
            assert r.status_code == 200, r.text
            return len(r.json()["jobs"])

        assert (lease(), lease()) == (2, 0)  # at its limit while both leases live
        with transaction(api.runtime.sessions) as session:
            session.execute(update(Job).values(lease_deadline=utcnow() - timedelta(seconds=1)))
        assert lease() == 2
