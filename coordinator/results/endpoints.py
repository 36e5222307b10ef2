from __future__ import annotations

from fastapi import APIRouter

from coordinator.db import transaction
from coordinator.deps import RuntimeDep, VolunteerDep
from coordinator.results import service, tasks
from shared.protocol import Routes, SubmitRequest, SubmitResponse

router = APIRouter(tags=["results"])


@router.post(Routes.submit, response_model=SubmitResponse)
def submit(body: SubmitRequest, who: VolunteerDep, rt: RuntimeDep) -> SubmitResponse:
    # Commit first, enqueue after: an ack means the trace is durable, and a verification task
    # can never run before the row it checks exists.
    with transaction(rt.sessions) as session:
        response, trace_ids = service.submit(session, who, body, lock=not rt.settings.is_sqlite)
    tasks.enqueue_verification(rt, trace_ids)
    return response
