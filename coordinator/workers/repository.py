from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from coordinator.workers.models import Worker


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
    session.execute(update(Worker).where(Worker.id == worker_id).values(last_seen_at=now))


def add_counts(session: Session, worker_id: uuid.UUID, submitted: int = 0, accepted: int = 0) -> None:
    session.execute(
        update(Worker)
        .where(Worker.id == worker_id)
        .values(
            jobs_submitted=Worker.jobs_submitted + submitted,
            jobs_accepted=Worker.jobs_accepted + accepted,
        )
    )
