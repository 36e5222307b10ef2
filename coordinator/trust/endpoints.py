"""Operator endpoints of the trust area: worker records, validations, quarantine, tokens."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from coordinator.db import after_commit, transaction
from coordinator.deps import Limit, Offset, OperatorDep, RuntimeDep, SessionDep
from coordinator.runtime import Runtime
from coordinator.trust import evidence, service, tasks
from shared.protocol import Routes, TokenOut
from shared.trust_types import CalibrationIn, CalibrationOut, Requeued, TrustOut, ValidationOut

router = APIRouter(tags=["trust"])
WORKER = Routes.workers + "/{worker_id}"


def _view(rt: Runtime) -> service.View:
    s = rt.settings
    return service.View(s.validation_floor, s.evidence_false_alarm, s.evidence_lifetime)


@router.get("/trust/workers", response_model=list[TrustOut])
def records(
    session: SessionDep, rt: RuntimeDep, _: OperatorDep, limit: Limit = 100, offset: Offset = 0
) -> list[TrustOut]:
    return service.records(session, _view(rt), limit, offset)


@router.get(WORKER + "/trust", response_model=TrustOut)
def record(worker_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, _: OperatorDep) -> TrustOut:
    return service.record_of(session, worker_id, _view(rt))


@router.get("/trust/validations", response_model=list[ValidationOut])
def validations(
    session: SessionDep,
    _: OperatorDep,
    worker_id: uuid.UUID | None = None,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Offset = 0,
) -> list[ValidationOut]:
    return service.validations(session, worker_id, status, limit, offset)


@router.post(WORKER + "/trust/restore", response_model=TrustOut)
def restore(worker_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, _: OperatorDep) -> TrustOut:
    service.restore(session, worker_id)
    return service.record_of(session, worker_id, _view(rt))


@router.post(WORKER + "/trust/ban", response_model=TrustOut)
def ban(worker_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, _: OperatorDep) -> TrustOut:
    service.ban(session, worker_id)
    return service.record_of(session, worker_id, _view(rt))


@router.post(WORKER + "/trust/revalidate", response_model=Requeued)
def revalidate(worker_id: uuid.UUID, rt: RuntimeDep, _: OperatorDep) -> Requeued:
    with transaction(rt.sessions) as session:
        ids = service.revalidate(session, worker_id)
        # after the withdrawal is committed, so no task can find the traces unmarked
        after_commit(session, lambda: tasks.enqueue_validation(rt, ids))
    return Requeued(worker_id=worker_id, traces=len(ids))


@router.post(WORKER + "/token", response_model=TokenOut, status_code=201)
def rotate_token(worker_id: uuid.UUID, session: SessionDep, _: OperatorDep) -> TokenOut:
    token = service.rotate_token(session, worker_id)
    worker = service.worker_scope(session, worker_id)
    return TokenOut(worker_id=worker_id, token=token, scope=worker)


@router.delete(WORKER + "/token", status_code=204)
def revoke_token(worker_id: uuid.UUID, session: SessionDep, _: OperatorDep) -> Response:
    service.revoke_token(session, worker_id)
    return Response(status_code=204)


@router.get("/trust/calibrations", response_model=list[CalibrationOut])
def calibrations(session: SessionDep, _: OperatorDep) -> list[CalibrationOut]:
    return evidence.calibrations(session)


@router.put("/trust/calibrations", response_model=CalibrationOut)
def put_calibration(body: CalibrationIn, session: SessionDep, _: OperatorDep) -> CalibrationOut:
    """Store honest cell counts for (model, worker dtype, validator dtype); replaces an older one."""
    return evidence.put_calibration(session, body)
