"""A worker killed mid-job: its leases run out, and another worker does the very jobs it held. The
proof is on the traces (the rescuer's worker id and lease), not only in the campaign finishing."""

from __future__ import annotations

import signal

from sqlalchemy import create_engine, text

from tests.integration.conftest import Cluster
from tests.waiting import wait_for


def _query(cluster: Cluster, sql: str, **params: str) -> list[tuple[str, ...]]:
    engine = create_engine(cluster.database_url)
    with engine.connect() as conn:
        rows = conn.execute(text(sql), params).all()
    engine.dispose()
    return [tuple(str(v) for v in row) for row in rows]


def _worker_id(cluster: Cluster, name: str) -> str:
    (row,) = _query(cluster, "SELECT CAST(id AS TEXT) FROM workers WHERE name = :name", name=name)
    return row[0]


def _held_by(cluster: Cluster, worker_id: str) -> dict[str, str]:
    """job id -> lease id of the jobs this worker holds leased right now."""
    sql = (
        "SELECT CAST(id AS TEXT), CAST(lease_id AS TEXT) FROM jobs "
        "WHERE status = 'leased' AND CAST(worker_id AS TEXT) = :worker"
    )
    return dict(_query(cluster, sql, worker=worker_id))  # type: ignore[arg-type]


def test_the_jobs_a_killed_worker_held_are_done_by_its_rescuer(cluster: Cluster) -> None:
    campaign_id = cluster.campaign(problems=4, samples=1)
    doomed = cluster.start_worker("doomed", "--batch-size", "4", "--max-jobs", "4")
    doomed_id = _worker_id(cluster, "doomed")
    wait_for(
        lambda: _held_by(cluster, doomed_id), 120, lambda: f"no lease yet: {cluster.progress(campaign_id)}"
    )
    doomed.send_signal(signal.SIGKILL)  # mid-job: its leases stay until their deadline
    doomed.wait(timeout=30)
    orphaned = _held_by(cluster, doomed_id)  # what it held when it died, and never submitted
    assert orphaned, "the killed worker held no lease at its death"

    cluster.start_worker("rescuer", "--exit-when-idle", "8")
    rescuer_id = _worker_id(cluster, "rescuer")
    cluster.wait_done(campaign_id)
    traces = _query(
        cluster,
        "SELECT CAST(job_id AS TEXT), CAST(worker_id AS TEXT), CAST(lease_id AS TEXT) FROM traces",
    )  # the only campaign in this database
    by_job = {job: (worker, lease) for job, worker, lease in traces}
    assert len(by_job) == len(traces) == 4  # one trace per job
    for job, lease in orphaned.items():
        worker, stored_lease = by_job[job]
        assert worker == rescuer_id, f"job {job}: trace by {worker}, not the rescuer {rescuer_id}"
        assert stored_lease != lease  # under the rescuer's own lease, not the dead one's
    assert {w for w, _ in by_job.values()} <= {doomed_id, rescuer_id}
