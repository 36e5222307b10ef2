"""The caller's own credit (any token), and the public numbers (no token): the leaderboard, and
the coordinator's totals and throughput."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import APIRouter, Query, Request

from coordinator.credit import service
from coordinator.db import read_transaction
from coordinator.deps import PrincipalDep, RuntimeDep, SessionDep
from coordinator.runtime import Runtime
from shared.credit_types import Leaderboard, PublicSummary
from shared.protocol import CreditOut, Routes

router = APIRouter(tags=["credit"])
T = TypeVar("T")


@router.get(Routes.credit, response_model=CreditOut)
def own_credit(session: SessionDep, who: PrincipalDep) -> CreditOut:
    return service.credit_of(session, who.worker_id, who.name)


@router.get(Routes.credit + "/leaderboard", response_model=Leaderboard)
def leaderboard(request: Request, rt: RuntimeDep) -> Leaderboard:
    """Workers and teams by credit, all time and over the last 7 days: names and sums only. Anyone
    may ask (rate-limited per address); the answer is shared for a few seconds."""
    return _memo(request).get("leaderboard", lambda: _read(rt, service.leaderboard))


@router.get(Routes.credit + "/summary", response_model=PublicSummary)
def summary(
    request: Request, rt: RuntimeDep, hours: Annotated[int, Query(ge=1, le=168)] = 24
) -> PublicSummary:
    """Totals of the credited work, and tokens/s and traces/s over the last `hours` (public)."""
    return _memo(request).get(("summary", hours), lambda: _read(rt, lambda s: service.summary(s, hours)))


def _memo(request: Request) -> service.Memo:
    state = request.app.state
    if not hasattr(state, "public_memo"):
        state.public_memo = service.Memo()
    memo: service.Memo = state.public_memo
    return memo


def _read(rt: Runtime, read: service.Reader[T]) -> T:
    with read_transaction(rt.sessions) as session:
        return read(session)
