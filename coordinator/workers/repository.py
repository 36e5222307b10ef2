from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, func, select, update
from sqlalchemy.orm import Session

from coordinator.workers.models import Worker

WORKERS = cast(Table, Worker.__table__)


def add(session: Session, worker: Worker) -> Worker:
    session.add(worker)
    session.flush()
    return worker


def by_token_hash(session: Session, token_hash: str) -> Worker | None:
    return session.scalars(select(Worker).where(Worker.token_hash == token_hash)).first()


def get(session: Session, worker_id: uuid.UUID) -> Worker | None:
    return session.get(Worker, worker_id)


def list_all(session: Session, limit: int, offset: int) -> Sequence[Worker]:
    return session.scalars(select(Worker).order_by(Worker.created_at).limit(limit).offset(offset)).all()


def count(session: Session, scope: str | None = None) -> int:
    query = select(func.count()).select_from(Worker)
    if scope is not None:
        query = query.where(Worker.scope == scope)
    return int(session.scalar(query) or 0)


def touch(session: Session, worker_id: uuid.UUID, now: datetime) -> None:
    session.execute(update(WORKERS).where(WORKERS.c.id == worker_id).values(last_seen_at=now))


def lease_state(session: Session, worker_id: uuid.UUID) -> tuple[int, float, datetime | None]:
    """(lease credit, verification seconds spent, start of the hour they were spent in)."""
    w = WORKERS.c
    query = select(w.lease_credit, w.verify_spent_s, w.verify_window_at).where(w.id == worker_id)
    row = session.execute(query).first()
    return (0, 0.0, None) if row is None else (int(row[0]), float(row[1]), row[2])


def set_lease_credit(session: Session, worker_id: uuid.UUID, add: int | None) -> None:
    """Add to the credit, or (add=None) take it all away."""
    w = WORKERS.c
    value = 0 if add is None else w.lease_credit + add
    session.execute(update(WORKERS).where(w.id == worker_id).values(lease_credit=value))


def verification_window(
    session: Session, worker_id: uuid.UUID, lock: bool = False
) -> tuple[float, datetime | None]:
    """(seconds spent, start of the hour they were spent in) of the worker's verification. `lock`
    takes FOR NO KEY UPDATE, the lock the UPDATE that follows takes anyway: unlike FOR UPDATE it
    does not wait for the foreign-key checks of rows inserted for the worker meanwhile."""
    w = WORKERS.c
    query = select(w.verify_spent_s, w.verify_window_at).where(w.id == worker_id)
    row = session.execute(query.with_for_update(key_share=True) if lock else query).first()
    return (0.0, None) if row is None else (float(row[0]), row[1])


def set_verification_window(session: Session, worker_id: uuid.UUID, spent: float, start: datetime) -> None:
    w = WORKERS.c
    values = {"verify_spent_s": spent, "verify_window_at": start}
    session.execute(update(WORKERS).where(w.id == worker_id).values(values))


def add_counts(
    session: Session,
    worker_id: uuid.UUID,
    submitted: int = 0,
    accepted: int = 0,
    seen_at: datetime | None = None,
) -> None:
    # A Core UPDATE of the table: it runs on every submission, and the ORM form costs several times more.
    w = WORKERS.c
    values: dict[str, Any] = {
        "jobs_submitted": w.jobs_submitted + submitted,
        "jobs_accepted": w.jobs_accepted + accepted,
    }
    if seen_at is not None:
        values["last_seen_at"] = seen_at
    session.execute(update(WORKERS).where(w.id == worker_id).values(values))
