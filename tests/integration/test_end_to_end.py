"""The whole loop over real HTTP with real worker daemons and the bundled tiny model."""

from __future__ import annotations

import io
import time

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import create_engine, text

from tests.integration.conftest import Cluster
from tests.waiting import wait_for


def _trace_rows(cluster: Cluster) -> list[tuple[str, str, str]]:
    engine = create_engine(cluster.database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT CAST(job_id AS TEXT), CAST(worker_id AS TEXT), status FROM traces")
        ).all()
    engine.dispose()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def test_campaign_completes_and_dumps(cluster: Cluster) -> None:
    campaign_id = cluster.campaign(problems=6, samples=2)
    cluster.start_worker("alpha", "--exit-when-idle", "3")
    cluster.start_worker("beta", "--exit-when-idle", "3")
    done = cluster.wait_done(campaign_id)
    p = done["progress"]
    assert p["jobs"] == 12 and p["accepted"] + p["rejected"] == 12
    assert p["accepted"] > 0 and p["completion_tokens"] > 0
    researcher = {"Authorization": f"Bearer {cluster.operator}"}
    url = f"{cluster.url}/v1/datasets/{campaign_id}/export?format=parquet"
    # A dump takes a trace only once its spot-check is passed or skipped; the spot-checks drawn for
    # these new workers run on the task workers after the campaign is done.

    def dumped() -> pa.Table:
        return pq.read_table(io.BytesIO(httpx.get(url, headers=researcher, timeout=60).content))

    wait_for(
        lambda: dumped().num_rows >= p["accepted"],
        240,
        lambda: f"{dumped().num_rows} of {p['accepted']} accepted traces in the dump",
        poll_s=0.5,
    )
    table = dumped()  # a dump only grows: read once more after the wait
    assert table.num_rows == p["accepted"]
    assert set(table.column("passed").to_pylist()) == {True}
    for proc in cluster.workers:
        assert proc.wait(timeout=60) == 0


def test_coordinator_restart_mid_campaign_loses_nothing(cluster: Cluster) -> None:
    campaign_id = cluster.campaign(problems=8, samples=2)
    cluster.start_worker("steady", "--batch-size", "2", "--max-jobs", "2", "--exit-when-idle", "10")
    wait_for(
        lambda: cluster.progress(campaign_id)["progress"]["submitted"] >= 2,
        180,
        lambda: f"before the restart: {cluster.progress(campaign_id)}",
    )
    cluster.kill_coordinator()
    acknowledged = {row[0] for row in _trace_rows(cluster)}
    time.sleep(1.5)
    cluster.start_coordinator()
    done = cluster.wait_done(campaign_id)
    after = {row[0] for row in _trace_rows(cluster)}
    assert acknowledged <= after
    assert len(after) == done["progress"]["jobs"] == 16
