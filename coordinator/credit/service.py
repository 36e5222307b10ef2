"""Credit, BOINC-style (docs/credit.md): a trace's tokens earn credit at its model's rate once the
trace is usable (validation passed or skipped; not withdrawn, returned or unverifiable); the credit
is taken back when the trace is withdrawn or returned and granted again when a re-check passes it.
The trust area decides when (coordinator/trust/service.py calls `grant` and `revoke`)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar, cast

from sqlalchemy.orm import Session

from coordinator.credit import rates, repository
from coordinator.db import utcnow
from coordinator.pipeline import service as pipeline
from coordinator.results.models import PENDING, Trace
from coordinator.trust.models import USABLE
from shared.credit_types import Board, Leaderboard, Point, PublicSummary, TeamRow, Throughput, WorkerRow
from shared.protocol import CreditOut

log = logging.getLogger(__name__)
WEEK = timedelta(days=7)
BOARD_SIZE = 100

# campaign id -> its model's estimated parameters, once found (a campaign's model never changes).
_CAMPAIGN_SIZE: dict[uuid.UUID, int] = {}


def usable(trace: Trace) -> bool:
    """`coordinator.trust.models.usable()` for one loaded trace."""
    return (
        trace.status != PENDING
        and trace.verifiable
        and not trace.withdrawn
        and not trace.returned
        and trace.validation in USABLE
    )


def grant(session: Session, trace: Trace) -> None:
    """Credit the trace's worker for its tokens if the trace is usable and holds no live grant."""
    if not usable(trace):
        return
    parameters = campaign_parameters(session, trace.campaign_id)
    tokens = int(trace.completion_tokens)
    values = {
        "id": uuid.uuid4(),
        "worker_id": trace.worker_id,
        "trace_id": trace.id,
        "tokens": tokens,
        "parameters": parameters,
        "amount": rates.credit(parameters, tokens),
        "created_at": utcnow(),
    }
    repository.add_grant(session, values)


def revoke(session: Session, trace_ids: Sequence[uuid.UUID]) -> None:
    """Take back the live grants of these traces (withdrawn or returned); none is a no-op."""
    repository.revoke(session, trace_ids)


def campaign_parameters(session: Session, campaign_id: uuid.UUID) -> int:
    """The campaign's model size (an artifact model's is its base model's), or 0 where this machine
    holds no config for it: such grants carry no credit (logged, so an operator can fetch it)."""
    known = _CAMPAIGN_SIZE.get(campaign_id)
    if known is not None:
        return known
    model = repository.campaign_model(session, campaign_id)
    if model is None:
        return 0
    name, revision = pipeline.base_model_of(session, *model)
    found = rates.model_parameters(name, revision)
    if found is None:
        log.warning("no config.json of %s here: its traces earn no credit until it is", name)
        return 0
    _CAMPAIGN_SIZE[campaign_id] = found
    return found


# --------------------------------------------------------------------------- teams


def join_team(session: Session, worker_id: uuid.UUID, name: str | None) -> None:
    if name:
        repository.join(session, worker_id, repository.add_team(session, name).id)


# --------------------------------------------------------------------------- reading


def credit_of(session: Session, worker_id: uuid.UUID, name: str) -> CreditOut:
    week_ago = utcnow() - WEEK
    credit, tokens = repository.worker_credit(session, worker_id, None)
    credit_7d, tokens_7d = repository.worker_credit(session, worker_id, week_ago)
    return CreditOut(
        name=name,
        team=repository.team_of(session, worker_id),
        credit=credit,
        credit_7d=credit_7d,
        tokens=tokens,
        tokens_7d=tokens_7d,
        rank=repository.rank(session, worker_id) if tokens else None,
    )


def board(session: Session, since: datetime | None, limit: int = BOARD_SIZE) -> Board:
    workers = [
        WorkerRow(rank=i, name=r.name, team=r.team, credit=float(r.credit), tokens=int(r.tokens))
        for i, r in enumerate(repository.worker_board(session, since, limit), start=1)
    ]
    teams = [
        TeamRow(rank=i, name=r.name, members=int(r.members), credit=float(r.credit), tokens=int(r.tokens))
        for i, r in enumerate(repository.team_board(session, since, limit), start=1)
    ]
    return Board(workers=workers, teams=teams)


def leaderboard(session: Session) -> Leaderboard:
    now = utcnow()
    return Leaderboard(
        all_time=board(session, None), last_7_days=board(session, now - WEEK), generated_at=now
    )


# --------------------------------------------------------------------------- public numbers

T = TypeVar("T")
Reader = Callable[[Session], T]
CACHE_S = 10.0  # public answers are shared by every caller for this long


class Memo:
    """Public answers, each computed at most once per CACHE_S: anyone may ask, so the aggregates
    behind them must not run once per request. One per app (the API process's)."""

    def __init__(self) -> None:
        self._items: dict[Hashable, tuple[float, object]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        now = time.monotonic()
        hit = self._items.get(key)
        if hit is not None and hit[0] > now:
            return cast(T, hit[1])
        value = compute()
        with self._lock:
            self._items[key] = (now + CACHE_S, value)
        return value


def summary(session: Session, hours: int, points: int = 96) -> PublicSummary:
    totals = repository.summary(session)
    return PublicSummary(
        volunteers=int(totals.workers),
        teams=repository.team_count(session),
        traces=int(totals.traces),
        completion_tokens=int(totals.tokens),
        credit=float(totals.credit),
        throughput=throughput(session, hours, points),
    )


def throughput(session: Session, hours: int, points: int) -> Throughput:
    """Tokens and traces per second over the last `hours`, in `points` buckets (empty ones zero)."""
    bucket_s = max(1, hours * 3600 // points)
    last = int(utcnow().timestamp()) // bucket_s
    first = last - points + 1
    found = {
        b: (n, tokens) for b, n, tokens in repository.throughput(session, _at(first, bucket_s), bucket_s)
    }
    return Throughput(
        bucket_s=bucket_s,
        points=[
            Point(
                at=_at(b, bucket_s),
                tokens_per_s=found.get(b, (0, 0))[1] / bucket_s,
                traces_per_s=found.get(b, (0, 0))[0] / bucket_s,
            )
            for b in range(first, last + 1)
        ],
    )


def _at(bucket: int, bucket_s: int) -> datetime:
    return datetime.fromtimestamp(bucket * bucket_s, UTC)
