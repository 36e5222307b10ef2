from __future__ import annotations

from fastapi import APIRouter, Response

from coordinator.db import transaction
from coordinator.deps import FastJSONRoute, RuntimeDep, VolunteerDep, wire
from coordinator.results import service, tasks
from shared.protocol import Routes, SubmitRequest, SubmitResponse

router = APIRouter(tags=["results"], route_class=FastJSONRoute)


@router.post(Routes.submit, response_model=SubmitResponse)
def submit(body: SubmitRequest, who: VolunteerDep, rt: RuntimeDep) -> Response:
    # Commit first, enqueue after: an ack means the trace is durable, and a verification task
    # can never run before the row it checks exists.
    settings = rt.settings
    with transaction(rt.sessions) as session:
        response, trace_ids = service.submit(
            session,
            who,
            body,
            lock=not settings.is_sqlite,
            seen_every_s=settings.last_seen_every_s,
            max_unverifiable=settings.max_unverifiable_per_worker,
        )
    tasks.enqueue_verification(rt, trace_ids)
    return wire(response)
