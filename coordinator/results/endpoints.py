from __future__ import annotations

from fastapi import APIRouter, Response

from coordinator.db import after_commit, transaction
from coordinator.deps import FastJSONRoute, RuntimeDep, VolunteerDep, wire
from coordinator.results import service, tasks
from shared.protocol import Routes, SubmitRequest, SubmitResponse

router = APIRouter(tags=["results"], route_class=FastJSONRoute)


@router.post(Routes.submit, response_model=SubmitResponse)
def submit(body: SubmitRequest, who: VolunteerDep, rt: RuntimeDep) -> Response:
    # An ack means the trace is durable; its verification is enqueued only once it is committed.
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
        after_commit(session, lambda: tasks.enqueue_verification(rt, trace_ids))
    return wire(response)
