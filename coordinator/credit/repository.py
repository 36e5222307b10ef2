"""All SQL of the credit area: the grants ledger, teams, and the leaderboard's sums."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Integer, Row, Table, false, func, select, update
from sqlalchemy import cast as cast_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from coordinator.campaigns.models import Campaign
from coordinator.credit.models import CreditGrant, Team, TeamMember
from coordinator.db import one_of, utcnow
from coordinator.results.models import Trace
from coordinator.workers.models import Worker

GRANTS = cast(Table, CreditGrant.__table__)
TRACES = cast(Table, Trace.__table__)
LIVE = GRANTS.c.revoked_at.is_(None)


def _insert(session: Session) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def add_grant(session: Session, values: dict[str, Any]) -> bool:
    """Insert a live grant unless the trace holds one already (the partial unique index decides,
    so two concurrent grants of one trace leave one row); True if inserted."""
    statement = _insert(session)(CreditGrant).values(values).on_conflict_do_nothing()
    return bool(getattr(session.execute(statement), "rowcount", 0))


def revoke(session: Session, trace_ids: Sequence[uuid.UUID], at: datetime | None = None) -> int:
    if not trace_ids:
        return 0
    statement = update(GRANTS).where(LIVE, one_of(session, GRANTS.c.trace_id, trace_ids))
    result = session.execute(statement.values(revoked_at=at or utcnow()))
    return int(getattr(result, "rowcount", 0))


def campaign_model(session: Session, campaign_id: uuid.UUID) -> tuple[str, str | None] | None:
    row = session.execute(
        select(Campaign.model_name, Campaign.model_revision).where(Campaign.id == campaign_id)
    ).first()
    return None if row is None else (str(row[0]), row[1])


def live_grants(session: Session, trace_id: uuid.UUID) -> list[CreditGrant]:
    query = select(CreditGrant).where(CreditGrant.trace_id == trace_id, CreditGrant.revoked_at.is_(None))
    return list(session.scalars(query))


# --------------------------------------------------------------------------- teams


def team_by_name(session: Session, name: str) -> Team | None:
    return session.scalars(select(Team).where(Team.key == name.casefold())).first()


def add_team(session: Session, name: str) -> Team:
    """The team of that name, created if new (two registrations creating it at once insert once)."""
    values = {"id": uuid.uuid4(), "name": name, "key": name.casefold(), "created_at": utcnow()}
    session.execute(_insert(session)(Team).values(values).on_conflict_do_nothing())
    found = team_by_name(session, name)
    assert found is not None  # inserted just now, or by whoever won the race
    return found


def join(session: Session, worker_id: uuid.UUID, team_id: uuid.UUID) -> None:
    session.add(TeamMember(worker_id=worker_id, team_id=team_id, joined_at=utcnow()))


def team_of(session: Session, worker_id: uuid.UUID) -> str | None:
    query = select(Team.name).join(TeamMember, TeamMember.team_id == Team.id)
    return session.scalar(query.where(TeamMember.worker_id == worker_id))


# --------------------------------------------------------------------------- sums


def _window(since: datetime | None) -> list[ColumnElement[bool]]:
    return [LIVE] if since is None else [LIVE, GRANTS.c.created_at >= since]


def worker_credit(session: Session, worker_id: uuid.UUID, since: datetime | None) -> tuple[float, int]:
    """(credit, tokens) of the worker's live grants made since `since` (all, if None)."""
    g = GRANTS.c
    query = select(func.coalesce(func.sum(g.amount), 0.0), func.coalesce(func.sum(g.tokens), 0))
    row = session.execute(query.where(g.worker_id == worker_id, *_window(since))).one()
    return float(row[0]), int(row[1])


def _public_workers() -> ColumnElement[bool]:
    # Banned workers (an operator's ban or a quarantine) are not shown while the ban lasts.
    return Worker.banned.is_(false())


def worker_board(session: Session, since: datetime | None, limit: int) -> Sequence[Row[Any]]:
    """(name, team, credit, tokens) of the top workers by live credit granted since `since`."""
    g = GRANTS.c
    total = func.sum(g.amount).label("credit")
    query = (
        select(Worker.name, Team.name.label("team"), total, func.sum(g.tokens).label("tokens"))
        .select_from(GRANTS.join(Worker, Worker.id == g.worker_id))
        .join(TeamMember, TeamMember.worker_id == Worker.id, isouter=True)
        .join(Team, Team.id == TeamMember.team_id, isouter=True)
        .where(_public_workers(), *_window(since))
        .group_by(Worker.id, Worker.name, Team.name)
        .order_by(total.desc(), Worker.name)
        .limit(limit)
    )
    return session.execute(query).all()


def team_board(session: Session, since: datetime | None, limit: int) -> Sequence[Row[Any]]:
    """(name, members credited, credit, tokens) of the top teams by their members' live credit."""
    g = GRANTS.c
    total = func.sum(g.amount).label("credit")
    query = (
        select(Team.name, func.count(func.distinct(g.worker_id)).label("members"), total,
               func.sum(g.tokens).label("tokens"))
        .select_from(GRANTS.join(TeamMember, TeamMember.worker_id == g.worker_id))
        .join(Team, Team.id == TeamMember.team_id)
        .join(Worker, Worker.id == g.worker_id)
        .where(_public_workers(), *_window(since))
        .group_by(Team.id, Team.name)
        .order_by(total.desc(), Team.name)
        .limit(limit)
    )  # fmt: skip
    return session.execute(query).all()


def rank(session: Session, worker_id: uuid.UUID) -> int:
    """1 + how many shown workers have more live credit than this one."""
    g = GRANTS.c
    sums = (
        select(g.worker_id, func.sum(g.amount).label("credit")).where(LIVE).group_by(g.worker_id).subquery()
    )
    mine = select(sums.c.credit).where(sums.c.worker_id == worker_id).scalar_subquery()
    query = (
        select(func.count())
        .select_from(sums.join(Worker, Worker.id == sums.c.worker_id))
        .where(_public_workers(), sums.c.credit > mine)
    )
    return 1 + int(session.scalar(query) or 0)


def summary(session: Session) -> Row[Any]:
    """(workers, traces, tokens, credit) over every live grant, and the teams with a member."""
    g = GRANTS.c
    query = select(
        func.count(func.distinct(g.worker_id)).label("workers"),
        func.count().label("traces"),
        func.coalesce(func.sum(g.tokens), 0).label("tokens"),
        func.coalesce(func.sum(g.amount), 0.0).label("credit"),
    ).where(LIVE)
    return session.execute(query).one()


def team_count(session: Session) -> int:
    return int(session.scalar(select(func.count(func.distinct(TeamMember.team_id)))) or 0)


def throughput(session: Session, since: datetime, bucket_s: int) -> list[tuple[int, int, int]]:
    """(bucket number since the epoch, traces, completion tokens) of the traces stored since `since`,
    returned ones included: they were generated all the same."""
    t = TRACES.c
    if session.get_bind().dialect.name == "postgresql":
        bucket: ColumnElement[Any] = func.floor(func.extract("epoch", t.created_at) / bucket_s)
    else:
        bucket = cast_(func.strftime("%s", t.created_at), Integer) / bucket_s
    labelled = bucket.label("bucket")
    query = (
        select(labelled, func.count(), func.coalesce(func.sum(t.completion_tokens), 0))
        .where(t.created_at >= since)
        .group_by(labelled)
    )
    return [(int(b), int(n), int(tokens)) for b, n, tokens in session.execute(query)]
