from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from coordinator.db import transaction
from coordinator.deps import FastJSONRoute, PrincipalDep, RuntimeDep, VolunteerDep, wire
from coordinator.jobs import service
from shared.protocol import (
    HeartbeatRequest,
    HeartbeatResponse,
    LeaseGrant,
    LeaseRequest,
    ReleaseRequest,
    ReleaseResponse,
    Routes,
    WaitingModels,
)

router = APIRouter(tags=["jobs"], route_class=FastJSONRoute)

# Workers call these all at once, so the transaction lives inside the endpoint: its connection goes
# back to the pool before FastAPI validates the response in the shared thread pool. A session
# dependency would hold it until then, and under load the threads waiting for a connection and the
# finished requests waiting for a thread deadlock each other.


@router.post(Routes.lease, response_model=LeaseGrant)
def lease(body: LeaseRequest, who: VolunteerDep, rt: RuntimeDep) -> Response:
    with transaction(rt.sessions) as session:
        grant = service.lease(session, who, body, rt.settings)
    return wire(grant)


@router.post(Routes.heartbeat, response_model=HeartbeatResponse)
def heartbeat(body: HeartbeatRequest, who: VolunteerDep, rt: RuntimeDep) -> HeartbeatResponse:
    with transaction(rt.sessions) as session:
        return service.heartbeat(session, who, body, rt.settings)


@router.post(Routes.release, response_model=ReleaseResponse)
def release(body: ReleaseRequest, who: VolunteerDep, rt: RuntimeDep) -> ReleaseResponse:
    with transaction(rt.sessions) as session:
        return service.release(session, who, body)


@router.get(Routes.waiting_models, response_model=WaitingModels)
def waiting_models(
    rt: RuntimeDep,
    _: PrincipalDep,
    dtype: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
) -> WaitingModels:
    """Models with jobs waiting, most jobs first, sized where the coordinator holds their config:
    what a worker started without --model chooses from. `dtype`: only campaigns that take work
    computed in it (as a lease naming it would)."""
    with transaction(rt.sessions) as session:
        return service.waiting_models(session, dtype)
