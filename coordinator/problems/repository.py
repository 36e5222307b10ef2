from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from coordinator.problems.models import Problem, ProblemSet


def add_set(session: Session, problem_set: ProblemSet) -> ProblemSet:
    session.add(problem_set)
    session.flush()
    return problem_set


def get_set(session: Session, set_id: uuid.UUID) -> ProblemSet | None:
    return session.get(ProblemSet, set_id)


def set_by_name(session: Session, name: str) -> ProblemSet | None:
    return session.scalars(select(ProblemSet).where(ProblemSet.name == name)).first()


def list_sets(session: Session) -> Sequence[ProblemSet]:
    return session.scalars(select(ProblemSet).order_by(ProblemSet.created_at)).all()


def insert_problems(session: Session, rows: Iterable[dict[str, Any]], chunk: int = 1000) -> int:
    """Bulk insert in chunks so a large import never holds every row in memory."""
    total, batch = 0, []
    for row in rows:
        batch.append(row)
        if len(batch) >= chunk:
            session.execute(insert(Problem), batch)
            total, batch = total + len(batch), []
    if batch:
        session.execute(insert(Problem), batch)
        total += len(batch)
    return total


def problem_ids(session: Session, set_id: uuid.UUID) -> Sequence[uuid.UUID]:
    query = select(Problem.id).where(Problem.problem_set_id == set_id).order_by(Problem.external_id)
    return session.scalars(query).all()


def count_problems(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Problem)) or 0)
