from __future__ import annotations

import uuid

from fastapi import APIRouter

from coordinator.credit import service as credit
from coordinator.deps import Limit, Offset, OperatorDep, RuntimeDep, SessionDep
from coordinator.workers import service
from coordinator.workers.models import Worker
from shared.protocol import (
    ErrorBody,
    RegisterRequest,
    RegisterResponse,
    Routes,
    Scope,
    TokenCreate,
    TokenOut,
    WorkerOut,
)

router = APIRouter(tags=["workers"])


@router.post(
    Routes.register,
    response_model=RegisterResponse,
    status_code=201,
    responses={403: {"model": ErrorBody, "description": "registration closed, or no valid invite code"}},
)
def register(body: RegisterRequest, session: SessionDep, rt: RuntimeDep) -> RegisterResponse:
    service.check_registration(rt.settings, body.invite_code)
    worker, token = service.create(session, body.name, Scope.volunteer, body)
    credit.join_team(session, worker.id, body.team)
    service.remember(token, worker, rt.settings.auth_cache_s)
    return RegisterResponse(worker_id=worker.id, token=token, scope=Scope.volunteer)


@router.post(Routes.tokens, response_model=TokenOut, status_code=201)
def create_token(body: TokenCreate, session: SessionDep, _: OperatorDep) -> TokenOut:
    worker, token = service.create(session, body.name, body.scope)
    return TokenOut(worker_id=worker.id, token=token, scope=body.scope)


def _out(session: SessionDep, rt: RuntimeDep, worker: Worker) -> WorkerOut:
    return service.to_out(session, worker, rt.settings)


@router.get(Routes.workers, response_model=list[WorkerOut])
def list_workers(
    session: SessionDep, rt: RuntimeDep, _: OperatorDep, limit: Limit = 100, offset: Offset = 0
) -> list[WorkerOut]:
    return [_out(session, rt, w) for w in service.list_workers(session, limit, offset)]


@router.post(Routes.workers + "/{worker_id}/ban", response_model=WorkerOut)
def ban(worker_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, _: OperatorDep) -> WorkerOut:
    return _out(session, rt, service.set_banned(session, worker_id, True))


@router.post(Routes.workers + "/{worker_id}/restore", response_model=WorkerOut)
def restore(worker_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, _: OperatorDep) -> WorkerOut:
    return _out(session, rt, service.set_banned(session, worker_id, False))
