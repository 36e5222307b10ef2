from __future__ import annotations

from fastapi import APIRouter

from coordinator.deps import RuntimeDep, SessionDep, VolunteerDep
from coordinator.jobs import service
from shared.protocol import HeartbeatRequest, HeartbeatResponse, LeaseGrant, LeaseRequest, Routes

router = APIRouter(tags=["jobs"])


@router.post(Routes.lease, response_model=LeaseGrant)
def lease(body: LeaseRequest, session: SessionDep, who: VolunteerDep, rt: RuntimeDep) -> LeaseGrant:
    return service.lease(session, who, body, rt.settings)


@router.post(Routes.heartbeat, response_model=HeartbeatResponse)
def heartbeat(body: HeartbeatRequest, session: SessionDep, who: VolunteerDep, rt: RuntimeDep) -> HeartbeatResponse:
    return service.heartbeat(session, who, body, rt.settings)
