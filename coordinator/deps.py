"""FastAPI dependencies shared by every area's endpoints: runtime, sessions, callers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from coordinator.db import transaction
from coordinator.runtime import Runtime
from coordinator.workers import service as workers
from shared.protocol import Scope


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]


def session(rt: RuntimeDep) -> Iterator[Session]:
    """One transaction per request: committed when the endpoint returns, rolled back on error."""
    with transaction(rt.sessions) as s:
        yield s


SessionDep = Annotated[Session, Depends(session)]


def _bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def principal(rt: RuntimeDep, authorization: Annotated[str | None, Header()] = None) -> workers.Principal:
    # Authentication uses its own short transaction, so a rejected caller never touches state.
    with transaction(rt.sessions) as s:
        return workers.authenticate(s, _bearer(authorization))


PrincipalDep = Annotated[workers.Principal, Depends(principal)]


def volunteer(who: PrincipalDep) -> workers.Principal:
    workers.require(who, Scope.volunteer, Scope.operator)
    return who


def operator(who: PrincipalDep) -> workers.Principal:
    workers.require(who, Scope.operator)
    return who


def researcher(who: PrincipalDep) -> workers.Principal:
    workers.require(who, Scope.researcher)
    return who


VolunteerDep = Annotated[workers.Principal, Depends(volunteer)]
OperatorDep = Annotated[workers.Principal, Depends(operator)]
ResearcherDep = Annotated[workers.Principal, Depends(researcher)]
