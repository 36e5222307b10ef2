"""Reads never hold what writers need: a dataset export consumed slowly, over real HTTP, neither
blocks a registration (SQLite's single writer lock) nor keeps a PostgreSQL connection in a
transaction while the client is not reading."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select, text

from coordinator.db import transaction
from coordinator.jobs.models import Job
from coordinator.results import repository as results
from coordinator.results.models import Trace
from coordinator.trust.models import SKIPPED
from coordinator.workers import service as workers
from shared.protocol import Scope
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import make_campaign
from tests.pipeline.pipeline_helpers import live_server

# Far more JSONL than the kernel's socket buffers and uvicorn's write buffer hold together, so the
# server is still inside the export when the client stops reading; several export pages too.
TRACES = 1200
TEXT_BYTES = 16_000


def _accepted_traces(api: Api, problems: int, samples: int) -> str:
    """A campaign whose every job has a large accepted trace, stored directly (no verification)."""
    campaign_id: str = make_campaign(api, problems=problems, samples=samples)["id"]
    with transaction(api.runtime.sessions) as session:
        worker, _ = workers.create(session, "bulk", Scope.volunteer)
        jobs = session.scalars(select(Job.id).where(Job.campaign_id == uuid.UUID(campaign_id))).all()
        now = datetime.now(UTC)
        results.insert_traces(
            session, [_trace_row(job, uuid.UUID(campaign_id), worker.id, now) for job in jobs]
        )
    return campaign_id


def _trace_row(
    job_id: uuid.UUID, campaign_id: uuid.UUID, worker_id: uuid.UUID, now: datetime
) -> dict[str, object]:
    return {
        "id": uuid.uuid4(),
        "job_id": job_id,
        "campaign_id": campaign_id,
        "worker_id": worker_id,
        "lease_id": uuid.uuid4(),
        "attempt_id": uuid.uuid4(),
        "text": "x" * TEXT_BYTES,
        "completion_token_ids": [1, 2, 3],
        "logprobs": [-0.5, -0.5, -0.5],
        "finish_reason": "stop",
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "generate_s": 0.0,
        "engine": {"name": "transformers"},
        "hardware": {},
        "status": "accepted",
        "score": 1.0,
        "verdict": {"passed": True, "reason": "match", "details": {}},
        "created_at": now,  # one instant for all: pages must break ties by id
        "verified_at": now,
        "verifiable": True,
        "validation": SKIPPED,
        "withdrawn": False,
    }


@contextmanager
def _paused_export(base: str, path: str, headers: dict[str, str]) -> Iterator[tuple[socket.socket, bytes]]:
    """An HTTP/1.0 GET whose client reads the first body bytes and then stops reading; yields the
    socket and the body bytes read so far."""
    where = urlsplit(base)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server fills it
    sock.connect((where.hostname, where.port))
    lines = [f"GET {path} HTTP/1.0", f"Host: {where.netloc}"] + [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    received = b""
    while b"\r\n\r\n" not in received or received.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1024)  # the headers and the first body bytes: the export has begun
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    try:
        yield sock, received.split(b"\r\n\r\n", 1)[1]
    finally:
        sock.close()


def _rest(sock: socket.socket) -> bytes:
    sock.settimeout(120)
    parts = []
    while chunk := sock.recv(1 << 16):
        parts.append(chunk)
    return b"".join(parts)


def _idle_in_transaction(api: Api) -> int:
    """Coordinator connections to this test's database left open in a transaction, not running."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
    )
    with api.runtime.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_a_paused_export_blocks_no_writer_and_holds_no_transaction(api: Api, backend_name: str) -> None:
    campaign_id = _accepted_traces(api, problems=TRACES // 2, samples=2)
    with live_server(api.client.app) as base:
        path = f"/v1/datasets/{campaign_id}/export?format=jsonl"
        with _paused_export(base, path, api.researcher) as (sock, start):
            # Today's code held BEGIN IMMEDIATE here: the registration waited out SQLite's busy
            # timeout and failed with "database is locked".
            body = {"name": "newcomer", "engine": {"name": "transformers"}}
            registered = httpx.post(base + "/v1/workers/register", json=body, timeout=120)
            assert registered.status_code == 201, registered.text
            if backend_name == "postgresql":
                assert _idle_in_transaction(api) == 0
            dump = start + _rest(sock)
    ids = [json.loads(line)["id"] for line in _unchunked(dump).splitlines()]
    assert len(ids) == TRACES and set(ids) == _trace_ids(api)


def _unchunked(body: bytes) -> bytes:
    """The body of a chunked response (the server streams the export in chunks)."""
    parts: list[bytes] = []
    rest = body
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return b"".join(parts)
        parts.append(rest[:size])
        rest = rest[size + 2 :]


def _trace_ids(api: Api) -> set[str]:
    with transaction(api.runtime.sessions) as session:
        return {str(trace_id) for trace_id in session.scalars(select(Trace.id))}
