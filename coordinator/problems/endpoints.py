from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from coordinator.db import transaction
from coordinator.deps import OperatorDep, RuntimeDep, SessionDep
from coordinator.errors import BadRequest, ValidationFailed
from coordinator.problems import service
from shared.protocol import ErrorBody, ProblemSetCreate, ProblemSetOut, Routes

router = APIRouter(tags=["problems"])
CREATED: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "a set of that name exists, or repeated problem ids"}
}


@router.post(Routes.problem_sets, response_model=ProblemSetOut, status_code=201, responses=CREATED)
def create(body: ProblemSetCreate, session: SessionDep, _: OperatorDep) -> ProblemSetOut:
    """Load a built-in source (gsm8k, arithmetic, reasoning_gym, humaneval)."""
    return service.to_out(service.create_set(session, body))


@router.post(
    Routes.problem_sets + "/import", response_model=ProblemSetOut, status_code=201, responses=CREATED
)
async def import_jsonl(request: Request, name: str, _: OperatorDep, rt: RuntimeDep) -> ProblemSetOut:
    """Import a JSONL body (one problem per line, see docs/problems.md); all lines or none."""
    body = await request.body()
    try:
        lines = body.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise BadRequest("the problem file is not UTF-8") from exc
    spec = _jsonl_spec(name)

    def work() -> ProblemSetOut:
        with transaction(rt.sessions) as session:
            return service.to_out(service.create_set(session, spec, lines))

    return await run_in_threadpool(work)


def _jsonl_spec(name: str) -> ProblemSetCreate:
    # The name arrives as a query parameter: the wire model's own rules check it, as for a body.
    try:
        return ProblemSetCreate(name=name, source="jsonl")
    except ValidationError as exc:
        details = [{"loc": ["query", *e["loc"]], "msg": e["msg"]} for e in exc.errors()]
        raise ValidationFailed("the problem set's name is invalid", details) from exc


@router.get(Routes.problem_sets, response_model=list[ProblemSetOut])
def list_sets(session: SessionDep, _: OperatorDep) -> list[ProblemSetOut]:
    return [service.to_out(s) for s in service.list_sets(session)]


@router.get(Routes.problem_sets + "/{set_id}", response_model=ProblemSetOut)
def get_set(set_id: uuid.UUID, session: SessionDep, _: OperatorDep) -> ProblemSetOut:
    return service.to_out(service.get_set(session, set_id))
